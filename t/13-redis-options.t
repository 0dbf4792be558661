#!/usr/bin/perl
# mdm_redis over TCP with a password and a database number; a wrong
# password answers 503 with a clear line; names are refused at startup.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(sleep);
use MdmTest;

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my $port = $t->port('redis');

my $pid = fork // die;
if (!$pid) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', $port, '--bind', '127.0.0.1',
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

# wrong password: the handshake fails, one line, 503
$t->{ready_seen} = 1;
$t->mark_log;
{
    no warnings 'redefine';
    local *MdmTest::wait_ready = sub { 1 };
    $t->start_nginx($t->conf(redis => "127.0.0.1:$port",
                             redis_timeout => '2s password=wrong'));
}
ok $t->wait_for_log(qr/mdm: redis AUTH failed: WRONGPASS/, 5),
    'wrong password logged';
ok $t->wait_for_log(qr/mdm_version failed: NOAUTH.*password= right\? answering 503/, 5),
    'and why requests get 503';
my $r = $t->put('/mdm/checkin', $t->authenticate('TCP-2'), cert => 'tcp2');
is $r->{status}, 503, 'wrong password: 503';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
$t->stop_nginx;

# a host name is refused at startup (hiredis would block on DNS)
$t->write_conf($t->conf(redis => "localhost:$port"));
my $out = $t->nginx_test;
like $out, qr/mdm_redis: "localhost:\d+" is not unix:\/path or IPv4:port/,
    'names refused by nginx -t';

$t->finish;
done_testing;
