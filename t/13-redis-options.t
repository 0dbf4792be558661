#!/usr/bin/perl
# mdm_redis over TCP with a password and a database number, an ACL user
# (username=) and [IPv6]:port; a wrong password or a bad db= drops the
# connection with one clear line and answers 503 (never database 0); names
# are refused at startup; the old policy directives only warn.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(sleep time);
use MdmTest;

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my $port = $t->port('redis');

my $pid = fork // die;
if (!$pid) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', $port, '--bind', '127.0.0.1 ::1',
         '--requirepass', 's3cret', '--save', '', '--dir', $d,
         '--logfile', "$d/redis.log" or die;
}
push @{ $t->{procs} }, $pid;

my @cli = ('redis-cli', '-p', $port, '-a', 's3cret', '--no-auth-warning');
for (1 .. 100) {
    last if qx{@cli PING 2>/dev/null} =~ /PONG/;
    sleep 0.05;
}
for my $f (glob MdmTest::root() . '/redis-scripts/*.lua') {
    my $out = qx{@cli -x FUNCTION LOAD REPLACE < $f 2>&1};
    die "load $f: $out" if $out =~ /ERR/;
}

$t->start_nginx($t->conf(redis => "127.0.0.1:$port",
                         redis_timeout => '2s password=s3cret db=3'));
is $t->put('/mdm/checkin', $t->authenticate('TCP-1'), cert => 'tcp1')->{status},
    200, 'check-in over TCP with password';
like qx{@cli -n 3 HGET 'mdm:{TCP-1}:enr:TCP-1' type}, qr/^Device/,
    'stored in database 3';
is qx{@cli -n 0 EXISTS 'mdm:{TCP-1}:enr:TCP-1'}, "0\n", 'not in database 0';
$t->stop_nginx;


sub start_unready {
    my ($conf) = @_;
    no warnings 'redefine';
    local *MdmTest::wait_ready = sub { 1 };
    $t->mark_log;
    $t->start_nginx($conf);
}

sub count_log {
    my ($re) = @_;
    my @l = $t->log_since_mark =~ /$re/g;
    return scalar @l;
}

# an ACL user, over IPv6
qx{@cli ACL SETUSER mdmnginx on '>n9inx' '~mdm:*' '+\@all'};
$t->{ready_seen} = 1;
$t->mark_log;
$t->start_nginx($t->conf(redis => "[::1]:$port",
                         redis_timeout => '2s username=mdmnginx password=n9inx'));
ok $t->wait_ready, 'ready as an ACL user over [::1]';
is $t->put('/mdm/checkin', $t->authenticate('TCP-6'), cert => 'tcp6')->{status},
    200, 'check-in as user mdmnginx over IPv6';
like qx{@cli CLIENT LIST}, qr/user=mdmnginx/,
    'the module is connected as mdmnginx';
$t->stop_nginx;

# wrong password: AUTH fails, one line, the connection is dropped, 503
start_unready($t->conf(redis => "127.0.0.1:$port",
                       redis_timeout => '2s password=wrong'));
ok $t->wait_for_log(qr/mdm: redis "127\.0\.0\.1:$port": AUTH failed: WRONGPASS.*check mdm_redis username= and password=; answering 503, reconnecting/, 5),
    'wrong password logged';
ok wait_until(sub { count_log(qr/AUTH failed/) >= 2 }, 10),
    'dropped and tried again after a backoff';
unlike $t->log_since_mark, qr/mdm_version|redis ready/,
    'no version check on a connection that failed AUTH';
my $r = $t->put('/mdm/checkin', $t->authenticate('TCP-2'), cert => 'tcp2');
is $r->{status}, 503, 'wrong password: 503';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
$t->stop_nginx;

# a user with a wrong password: the same
start_unready($t->conf(redis => "127.0.0.1:$port",
                       redis_timeout => '2s username=mdmnginx password=s3cret'));
ok $t->wait_for_log(qr/AUTH failed: WRONGPASS/, 5), 'wrong user password logged';
is $t->put('/mdm/checkin', $t->authenticate('TCP-2'), cert => 'tcp2')->{status},
    503, 'wrong user password: 503';
$t->stop_nginx;

# a database Redis does not have: SELECT fails, never database 0
my $before = qx{@cli -n 0 DBSIZE};
start_unready($t->conf(redis => "127.0.0.1:$port",
                       redis_timeout => '2s password=s3cret db=40'));
ok $t->wait_for_log(qr/mdm: redis "127\.0\.0\.1:$port db=40": SELECT failed: ERR DB index is out of range; check mdm_redis db=/, 5),
    'bad db= logged';
ok wait_until(sub { count_log(qr/SELECT failed/) >= 2 }, 10),
    'dropped and tried again';
$r = $t->put('/mdm/checkin', $t->authenticate('TCP-3'), cert => 'tcp3');
is $r->{status}, 503, 'bad db=: 503';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
unlike $t->log_since_mark, qr/redis ready/, 'never ready';
is qx{@cli -n 0 DBSIZE}, $before, 'nothing written to database 0';
is qx{@cli -n 0 EXISTS 'mdm:{TCP-3}:enr:TCP-3'}, "0\n", 'TCP-3 not in db 0';
$t->stop_nginx;

# a host name is refused at startup (hiredis would block on DNS)
$t->write_conf($t->conf(redis => "localhost:$port"));
my $out = $t->nginx_test;
like $out, qr/mdm_redis: "localhost:\d+" needs an IP address, not a host name/,
    'names refused by nginx -t';

# so are unknown options, db= out of range, username= without password=
for my $c (["127.0.0.1:$port", 'nosuch=1', qr/"nosuch=1" is not timeout=, username=, password=, db=/],
           ["127.0.0.1:$port", 'db=10000', qr/"db=10000" needs a number from 0 to 9999/],
           ["127.0.0.1:$port", 'username=u', qr/username= needs password=/],
           ["::1:$port", '', qr/write it as \[IPv6\]:port/]) {
    $t->write_conf($t->conf(redis => $c->[0], redis_timeout => "2s $c->[1]"));
    like $t->nginx_test, $c->[2], "refused: $c->[0] $c->[1]";
}

# the policy directives moved to Redis: a warning, no effect
$t->write_conf($t->conf(extra => 'mdm_allow_rebind on; mdm_migration on;'));
$out = $t->nginx_test;
like $out, qr/\[warn\].*"mdm_allow_rebind" is ignored: the policy is now the field "allow_rebind" of the Redis hash mdm:policy, set by an administrator with "mdmctl conf set allow_rebind 1"/,
    'mdm_allow_rebind: warning';
like $out, qr/"mdm_migration" is ignored.*"migration"/, 'mdm_migration: warning';
like $out, qr/test is successful/, 'and the configuration still loads';

$t->finish;
done_testing;
