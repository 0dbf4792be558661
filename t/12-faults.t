#!/usr/bin/perl
# Faults the module must survive: Redis stopped, paused, or with the wrong
# library; clients that go away; reload and graceful quit under load.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX qw(:sys_wait_h);
use IO::Select;
use MdmTest;

my $t = MdmTest->new;
$t->start_nginx($t->conf(redis_timeout => '1500ms'));
$t->enroll('DEV1', 'dev1');
my $tu = $t->token_update('DEV1');
my $r;


sub access_lines { scalar(() = $t->slurp('access.log') =~ /\n/g) }

sub blocked {
    return $t->rcli_raw('INFO', 'clients') =~ /blocked_clients:(\d+)/ ? $1 : 0;
}

sub stored_burst {
    my $sum = 0;
    for my $i (1 .. $_[0]) {
        $sum += ($t->redis->hget("mdm:{BURST$i}:enr:BURST$i", 'token_updates')
                 // 1) - 1;
    }
    return $sum;
}

sub wait_ok {
    my $deadline = time + 15;
    while (time < $deadline) {
        my $r = $t->put('/mdm/checkin', $tu, cert => 'dev1');
        return 1 if $r->{status} == 200;
        sleep 0.1;
    }
    return 0;
}

# --- Redis stopped: 503 without waiting for the timeout, then recovery ----
$t->rcli_raw('SAVE');     # the restarted server loads dump.rdb
$t->stop_redis;
$t->mark_log;
my $t0 = time;
$r = $t->put('/mdm/checkin', $tu, cert => 'dev1');
is $r->{status}, 503, 'Redis down: 503';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
ok time - $t0 < 1.5, 'answered before the request timeout would fire';
ok $t->wait_for_log(qr/mdm: (lost redis|redis .* reconnecting|cannot connect)/, 5),
    'disconnect logged';
like $t->log_since_mark, qr/mdm: 503 TokenUpdate id="DEV1".*redis is not available/,
    'refusal logged';
$t->start_redis;      # same data dir, functions loaded again
ok wait_ok(), 'service resumes by itself when Redis returns';

# --- Redis paused: 503 at the timeout; static content keeps flowing -------
kill 'STOP', $t->{redis_pid};
my $sock = $t->connect(cert => 'dev1');
print $sock "PUT /mdm/checkin HTTP/1.1\r\nHost: localhost\r\n"
    . "Content-Type: application/x-apple-aspen-mdm-checkin\r\n"
    . "Content-Length: " . length($tu) . "\r\nConnection: close\r\n\r\n$tu";
$r = $t->put('/static', '', method => 'GET');
is $r->{status}, 200, 'static location answers while Redis is paused';
$r = $t->read_response($sock);
is $r->{status}, 503, 'paused Redis: 503 at the timeout';
close $sock;

# --- client goes away while its reply is pending ---------------------------
my $lines = access_lines();
for (1 .. 3) {
    my $s = $t->connect(cert => 'dev1');
    print $s "PUT /mdm/checkin HTTP/1.1\r\nHost: localhost\r\n"
        . "Content-Type: application/x-apple-aspen-mdm-checkin\r\n"
        . "Content-Length: " . length($tu) . "\r\n\r\n$tu";
    close $s;
}
# and one that leaves in the middle of its body
my $s = $t->connect(cert => 'dev1');
print $s "PUT /mdm/checkin HTTP/1.1\r\nHost: localhost\r\n"
    . "Content-Type: application/x-apple-aspen-mdm-checkin\r\n"
    . "Content-Length: " . length($tu) . "\r\n\r\n" . substr($tu, 0, 100);
close $s;
# each is logged once the module has answered it (503 at the timeout)
ok wait_until(sub { access_lines() >= $lines + 4 }, 10),
    'requests of departed clients finished';
kill 'CONT', $t->{redis_pid};
ok wait_ok(), 'service resumes after the pause, no crash';

# --- graceful quit with a request in flight: the reply is delivered --------
# Writes paused in Redis: the FCALL waits there, visibly (blocked_clients).
my $before = $t->redis->hget('mdm:{DEV1}:enr:DEV1', 'token_updates') // 0;
$t->rcli_raw('CLIENT', 'PAUSE', '10000', 'WRITE');
$sock = $t->connect(cert => 'dev1');
print $sock "PUT /mdm/checkin HTTP/1.1\r\nHost: localhost\r\n"
    . "Content-Type: application/x-apple-aspen-mdm-checkin\r\n"
    . "Content-Length: " . length($tu) . "\r\nConnection: close\r\n\r\n$tu";
ok wait_until(sub { blocked() >= 1 }, 5), 'the FCALL is waiting in Redis';
$t->mark_log;
$t->signal_nginx('QUIT');
ok $t->wait_for_log(qr/gracefully shutting down/, 5), 'worker shutting down';
$t->rcli_raw('CLIENT', 'UNPAUSE');
$r = $t->read_response($sock);
is $r->{status}, 200, 'request pending at quit still answered';
is $t->redis->hget('mdm:{DEV1}:enr:DEV1', 'token_updates'), $before + 1,
    'and stored';
waitpid $t->{nginx_pid}, 0;
delete $t->{nginx_pid};

# --- reload and quit during a burst of check-ins ---------------------------
$t->start_nginx(undef, workers => 2);

# --- a reload while Redis is slow: the new worker's calls wait for setup ---
# Redis stopped: the new worker's handshake gets no answer, so a check-in
# that reaches it waits (answering nothing meanwhile) instead of a 503.
kill 'STOP', $t->{redis_pid};
$t->mark_log;
$t->signal_nginx('HUP');
ok $t->wait_for_log(qr/gracefully shutting down/, 5),
    'old workers stopped accepting';
$sock = $t->connect(cert => 'dev1');
print $sock "PUT /mdm/checkin HTTP/1.1\r\nHost: localhost\r\n"
    . "Content-Type: application/x-apple-aspen-mdm-checkin\r\n"
    . "Content-Length: " . length($tu) . "\r\nConnection: close\r\n\r\n$tu";
ok !IO::Select->new($sock)->can_read(0.3),
    'no answer while the new worker sets up its Redis connection';
kill 'CONT', $t->{redis_pid};
$r = $t->read_response($sock);
is $r->{status}, 200, 'the waiting check-in is served once Redis answers';
close $sock;
my $n = 6;
$t->enroll("BURST$_", "b$_") for 1 .. $n;

sub burst {
    my ($seconds) = @_;
    my @kids;
    for my $i (1 .. $n) {
        my $pid = fork // die;
        if (!$pid) {
            my ($ok, $other, $lost) = (0, 0, 0);
            my $end = time + $seconds;
            my $m = $t->token_update("BURST$i");
            while (time < $end) {
                my $c = $t->connect(cert => "b$i", timeout => 5);
                last unless $c;            # listener closed: quit happened
                my $r = $t->request($c, '/mdm/checkin', $m);
                close $c;
                if ($r->{status} == 200) { $ok++ }
                elsif ($r->{status} == 0) { $lost++ }
                else { $other++ }
            }
            $t->spew("burst.$i", "$ok $other $lost");
            POSIX::_exit(0);
        }
        push @kids, $pid;
    }
    return @kids;
}

sub tally {
    my (@kids) = @_;
    waitpid $_, 0 for @kids;
    my ($ok, $other, $lost, $stored) = (0, 0, 0, 0);
    for my $i (1 .. $n) {
        my ($a, $b, $c) = split ' ', $t->slurp("burst.$i");
        $ok += $a; $other += $b; $lost += $c;
        $stored += $t->redis->hget("mdm:{BURST$i}:enr:BURST$i", 'token_updates') - 1;
    }
    return ($ok, $other, $lost, $stored);
}

# each signal once check-ins are flowing (and, after a reload, flowing
# through the new workers)
my @kids = burst(4);
ok wait_until(sub { stored_burst($n) >= 3 }, 5), 'burst under way';
$t->mark_log;
$t->signal_nginx('HUP');
ok wait_until(sub {
        $t->log_since_mark =~ /mdm: redis ready/ }, 5),
    'new workers ready after the reload';
my $mid = stored_burst($n);
ok wait_until(sub { stored_burst($n) >= $mid + 3 }, 5),
    'check-ins stored after the reload';
$t->signal_nginx('HUP');
my ($ok, $other, $lost, $stored) = tally(@kids);
ok $ok >= 3, "reload burst: $ok check-ins";
is $other, 0, 'reload: no refused check-in';
is $lost, 0, 'reload: no request without an answer';
is $stored, $ok, 'reload: every accepted check-in stored';

$t->redis->hset("mdm:{BURST$_}:enr:BURST$_", 'token_updates', 1) for 1 .. $n;
@kids = burst(3);
ok wait_until(sub { stored_burst($n) >= 3 }, 5), 'burst under way';
$t->signal_nginx('QUIT');
($ok, $other, $lost, $stored) = tally(@kids);
ok $ok >= 1, "quit burst: $ok check-ins before the quit";
is $other, 0, 'quit: no refused check-in';
is $lost, 0, 'quit: every request that reached nginx was answered';
is $stored, $ok, 'quit: every accepted check-in stored';
waitpid $t->{nginx_pid}, 0;
delete $t->{nginx_pid};
$t->finish;

# --- wrong Functions library: 503 and one clear line, then recovery --------
my $t2 = MdmTest->new;
$t2->spew('old.lua', "#!lua name=mdm\nredis.register_function{function_name="
    . "'mdm_version', callback=function() return '0' end, flags={'no-writes'}}\n");
my $sockpath = $t2->redis_sock;
system("redis-cli -s $sockpath -x FUNCTION LOAD REPLACE < $t2->{dir}/old.lua >/dev/null");
$t2->write_conf($t2->conf);
{
    no warnings 'redefine';
    local *MdmTest::wait_ready = sub { 1 };
    $t2->start_nginx;
}
my $libv = MdmTest::lib_version();
ok $t2->wait_for_log(qr/wrong Functions library: mdm_version answered "0", need "$libv"/, 5),
    'version mismatch logged';
$t2->mark_log;
$r = $t2->put('/mdm/checkin', $t2->authenticate('V1'), cert => 'v1');
is $r->{status}, 503, 'mismatch: 503';
is $t2->redis_state, '', 'nothing stored';
$t2->load_functions;
my $deadline = time + 15;
do { sleep 0.2; $r = $t2->put('/mdm/checkin', $t2->authenticate('V1'), cert => 'v1') }
    while $r->{status} != 200 && time < $deadline;
is $r->{status}, 200, 'serves once the right library is loaded';
my @l = $t2->slurp('error.log') =~ /wrong Functions library/g;
is scalar(@l), 1, 'mismatch logged once';
$t2->finish;

done_testing;
