#!/usr/bin/perl
# mdm_redis over TCP when the peer misbehaves: nothing listening (a
# restarting Redis), a listener that accepts and closes, one that never
# answers. Devices get 503 + Retry-After, the worker never crashes (same pid,
# no signal), and service comes back once a real Redis listens on the port.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);
use MdmTest;

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my $port = $t->port('redis');
my $au = $t->authenticate('TCP-1');


sub count_log {
    my ($re) = @_;
    my @l = $t->log_since_mark =~ /$re/g;
    return scalar @l;
}

sub workers {
    my $master = $t->{nginx_pid};
    my @w;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $s = <$fh> // next;
        push @w, $1 if $s =~ /^(\d+) \(nginx\) \S+ (\d+)/ && $2 == $master;
    }
    return join ',', sort @w;
}

# A fake Redis in a child: 'close' accepts and closes, 'silent' accepts and
# never reads or answers.
sub listener {
    my ($mode) = @_;
    my $l = IO::Socket::INET->new(Listen => 64, LocalAddr => "127.0.0.1:$port",
                                  ReuseAddr => 1) or die "listen: $!";
    my $pid = fork // die;
    if (!$pid) {
        my @held;
        while (my $c = $l->accept) {
            if ($mode eq 'silent') { push @held, $c } else { close $c }
        }
        POSIX::_exit(0);
    }
    close $l;
    return $pid;
}

sub stop_child {
    my ($pid) = @_;
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

sub refused {
    my ($what) = @_;
    my $t0 = time;
    my $r = $t->put('/mdm/checkin', $au, cert => 'tcp1');
    is $r->{status}, 503, "$what: 503";
    is $r->{headers}{'retry-after'}, '5', "$what: Retry-After";
    ok time - $t0 < 2, "$what: answered within the timeout";
}

$t->write_conf($t->conf(redis => "127.0.0.1:$port",
                        redis_timeout => '1s'));
{
    no warnings 'redefine';
    local *MdmTest::wait_ready = sub { 1 };
    $t->mark_log;
    $t->start_nginx;
}
ok wait_until(sub { workers() ne '' }, 10), 'worker started';
my $worker = workers();

# --- nothing listening: refused connects, retried with backoff -------------
# The handshake deadline (1 s) passes during these five attempts; the first
# failed connect used to leave a freed context behind for it.
ok wait_until(sub { count_log(qr/cannot connect to redis/) >= 5 }, 15),
    'refused connects logged and retried';
like $t->log_since_mark, qr/mdm: cannot connect to redis "127\.0\.0\.1:$port": Connection refused/,
    'a clear line';
refused('nothing listening');
is workers(), $worker, 'nothing listening: same worker';
unlike $t->slurp('error.log'), qr/exited on signal/, 'no crash';

# --- a listener that accepts and closes ------------------------------------
my $child = listener('close');
$t->mark_log;
ok wait_until(sub { count_log(qr/lost redis "127\.0\.0\.1:$port"/) >= 3 }, 20),
    'accept-and-close: disconnects logged and retried';
refused('accept-and-close');
is workers(), $worker, 'accept-and-close: same worker';
stop_child($child);

# --- a listener that never answers -----------------------------------------
$child = listener('silent');
$t->mark_log;
ok wait_until(sub {
        count_log(qr/redis "127\.0\.0\.1:$port" did not answer the handshake in time/) >= 2
    }, 20), 'silent peer: handshake deadline, reconnect';
refused('silent peer');
is workers(), $worker, 'silent peer: same worker';
stop_child($child);

# --- a real Redis on the port: service resumes -----------------------------
my $rpid = fork // die;
if (!$rpid) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', $port, '--bind', '127.0.0.1',
         '--save', '', '--dir', $d, '--logfile', "$d/redis.log" or die;
}
push @{ $t->{procs} }, $rpid;
my @cli = ('redis-cli', '-p', $port);
ok wait_until(sub { qx{@cli PING 2>/dev/null} =~ /PONG/ }, 10), 'redis up';
for my $f (glob MdmTest::root() . '/redis-scripts/*.lua') {
    my $out = qx{@cli -x FUNCTION LOAD REPLACE < $f 2>&1};
    die "load $f: $out" if $out =~ /ERR/;
}
$t->mark_log;
ok wait_until(sub { count_log(qr/mdm: redis ready/) >= 1 }, 15),
    'reconnects by itself';
is $t->put('/mdm/checkin', $au, cert => 'tcp1')->{status}, 200,
    'check-in over TCP served again';
is workers(), $worker, 'same worker throughout';
my @starts = $t->slurp('error.log') =~ /start worker process \d+/g;
is scalar(@starts), 1, 'no worker was respawned';

# --- graceful quit while a connect is failing (exit_process) ---------------
$t->stop_nginx;
kill 'TERM', $rpid;
waitpid $rpid, 0;
$t->{procs} = [];
$t->write_conf($t->conf(redis => "127.0.0.1:$port",
                        redis_timeout => '10s'));
{
    no warnings 'redefine';
    local *MdmTest::wait_ready = sub { 1 };
    $t->mark_log;
    $t->start_nginx;
}
ok wait_until(sub { count_log(qr/cannot connect to redis/) >= 2 }, 10),
    'connects failing again';
my $master = delete $t->{nginx_pid};
kill 'QUIT', $master;
ok wait_until(sub { waitpid($master, WNOHANG) == $master }, 10),
    'quit while failing';
is $?, 0, 'nginx exited cleanly';
unlike $t->slurp('error.log'), qr/exited on signal/, 'no worker crashed';

$t->finish;
done_testing;
