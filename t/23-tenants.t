#!/usr/bin/perl
# Several Redis per nginx: each server block (a tenant) with its own
# mdm_redis stores only in its own Redis, and fails alone; server blocks
# naming the same Redis share one connection per worker.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use POSIX qw(:sys_wait_h);
use MdmTest;

my $t = MdmTest->new;
my $d = $t->dir;
my $workers = 2;

# A second Redis, for tenant B, beside the harness's (tenant A).
my $sock_b = "$d/redis-b.sock";
my $pid_b = fork // die;
if (!$pid_b) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', '0', '--unixsocket', $sock_b,
        '--unixsocketperm', '777', '--dir', $d, '--dbfilename', 'b.rdb',
        '--save', '', '--appendonly', 'no', '--logfile', "$d/redis-b.log"
        or die;
}
push @{ $t->{procs} }, $pid_b;

sub rcli_b {
    my $out = qx{redis-cli -s $sock_b @_ 2>&1};
    return $out;
}

ok wait_until(sub { -S $sock_b && rcli_b('PING') =~ /PONG/ }),
    'second redis up';
for my $f (sort glob(MdmTest::root() . '/redis-scripts/*.lua')) {
    my $out = qx{redis-cli -s $sock_b -x FUNCTION LOAD REPLACE < $f 2>&1};
    die "FUNCTION LOAD $f: $out" if $out =~ /ERR/;
}

sub server {
    my ($port, $redis) = @_;
    return <<EOF;
    server {
        listen 127.0.0.1:%%PORT_$port%% ssl;
        server_name localhost;
        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;
        ssl_client_certificate %%TESTDIR%%/ca.crt;
        ssl_verify_client optional;
        mdm_redis $redis;
        mdm_topic $MdmTest::TOPIC;
        location = /mdm/checkin { mdm_checkin; }
        location = /mdm/connect { mdm_command; }
    }
EOF
}

# Tenant A inherits http's mdm_redis; tenant C names the same Redis
# explicitly; tenant B has its own.
my $conf = "%%GLOBALS%%\nevents { worker_connections 1024; }\nhttp {\n"
    . "    %%HTTP_GLOBALS%%\n"
    . "    mdm_redis unix:%%TESTDIR%%/redis.sock timeout=2s;\n"
    . server('https', 'unix:%%TESTDIR%%/redis.sock timeout=1s')
    . server('b', "unix:$sock_b timeout=2s")
    . server('c', 'unix:%%TESTDIR%%/redis.sock')
    . "}\n";
$conf =~ s/^        mdm_redis unix:%%TESTDIR%%\/redis.sock timeout=1s;\n//m;

$t->start_nginx($conf, workers => $workers);
ok $t->wait_ready(2 * $workers), 'every worker ready on both Redis';

# --- each tenant stores in its own Redis -------------------------------
$t->enroll('DEV-A', 'dev1');
for my $m ($t->authenticate('DEV-B'), $t->token_update('DEV-B')) {
    my $r = $t->put('/mdm/checkin', $m, cert => 'dev2', port => 'b');
    is $r->{status}, 200, 'tenant B check-in';
}

my $ea = 'mdm:{DEV-A}:enr:DEV-A';
my $eb = 'mdm:{DEV-B}:enr:DEV-B';
is $t->rcli_raw('EXISTS', $ea), "1\n", 'A enrolled in redis A';
is $t->rcli_raw('EXISTS', $eb), "0\n", 'B not in redis A';
is rcli_b("EXISTS '$eb'"), "1\n", 'B enrolled in redis B';
is rcli_b("EXISTS '$ea'"), "0\n", 'A not in redis B';

# --- two server blocks, one Redis: one connection per worker ------------
sub nginx_clients {
    my ($out) = @_;
    return scalar grep { !/cmd=client/ } grep { /\S/ } split /\n/, $out;
}
is nginx_clients($t->rcli_raw('CLIENT', 'LIST')), $workers,
    'servers A and C share one connection per worker to redis A';
is nginx_clients(rcli_b('CLIENT LIST')), $workers,
    'one connection per worker to redis B';

my $r = $t->put('/mdm/checkin', $t->authenticate('DEV-C'), cert => 'dev3',
                port => 'c');
is $r->{status}, 200, 'tenant C check-in';
is $t->rcli_raw('EXISTS', 'mdm:{DEV-C}:enr:DEV-C'), "1\n",
    'C stored in the Redis it shares with A';

# --- one tenant's Redis down: only that tenant answers 503 --------------
$t->mark_log;
kill 'TERM', $pid_b;
waitpid $pid_b, 0;
@{ $t->{procs} } = grep { $_ != $pid_b } @{ $t->{procs} };

ok wait_until(sub {
    $t->put('/mdm/checkin', $t->authenticate('DEV-B'), cert => 'dev2',
            port => 'b')->{status} == 503
}), 'tenant B answers 503 without its Redis';
$r = $t->put('/mdm/checkin', $t->authenticate('DEV-B'), cert => 'dev2',
             port => 'b');
is $r->{status}, 503, 'still 503';
ok $r->{headers}{'retry-after'}, 'with Retry-After';
for my $port ('https', 'c') {
    $r = $t->put('/mdm/checkin', $t->authenticate('DEV-A'), cert => 'dev1',
                 port => $port);
    is $r->{status}, 200, "tenant on redis A ($port) still answers 200";
}
like $t->log_since_mark, qr/mdm: lost redis "unix:\Q$sock_b\E"/,
    'the lost Redis is named in the log';
unlike $t->log_since_mark, qr/redis "unix:\Q$d\E\/redis.sock" /,
    'nothing logged about redis A';

# --- configuration errors ----------------------------------------------
my $dup = $conf;
$dup =~ s/(mdm_redis unix:\Q$sock_b\E timeout=2s;)/$1\n        $1/;
$t->write_conf($dup);
like $t->nginx_test, qr/"mdm_redis" directive is duplicate/,
    'two mdm_redis in one server refused';

my $none = "%%GLOBALS%%\nevents { worker_connections 1024; }\nhttp {\n"
    . "    %%HTTP_GLOBALS%%\n" . server('b', "unix:$sock_b") . "}\n";
$none =~ s/^        mdm_redis .*\n//m;
$t->write_conf($none);
like $t->nginx_test, qr/needs "mdm_redis" in the http or server block/,
    'an endpoint without any mdm_redis refused';

$t->finish;
done_testing;
