#!/usr/bin/perl
# mdm-apnsd: nothing is lost when APNs is down, when the sender is killed
# mid-batch, when another instance has to take over, or on SIGTERM.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use ApnsTest;

my $t = ApnsTest->new;
my $c = $t->push_cert('push1');
my $T = $c->{topic};

sub all_pushed {
    my @ids = @_;
    my $n = $t->token_counts;
    return !grep { !$n->{ $t->token_of($_) } } @ids;
}

sub drained {
    my $r = $t->redis;
    return $r->llen('mdm:push:q') == 0 && $r->scard('mdm:push:pending') == 0
        && !grep { $r->llen($_) } $r->keys('mdm:push:proc:*');
}

sub reset_log { truncate $t->dir . '/mock.jsonl', 0 }   # the mock appends

# ---- APNs down for a while: the backlog drains after it returns ------------
my @ids = map { sprintf 'DOWN%04d', $_ } 1 .. 300;
$t->enroll_many($T, @ids);
my $a = $t->start_apnsd(cert => [$c->{pem}], name => 'a1');
$t->produce_many(@ids);
ok $t->wait_for(sub { $t->apnsd_log('a1') =~ /circuit breaker OPEN/ }, 10),
    'APNs unreachable: the circuit breaker opens';
like $t->apnsd_log('a1'), qr/\[warn\] push id=DOWN\d+ topic=\Q$T\E status=0 reason=Network: /,
    'network failures logged with id and reason';
# While the breaker is open only its half-open probes go out: between two
# points a few probes apart, the network failures recorded must match the
# probes logged (+2 for the records on their way at either end), where a
# sender without a breaker retries each of the 300 pushes every 100-500 ms.
sub probes { scalar(() = $t->apnsd_log('a1') =~ /probe failed \(/g) }
sub net { $t->stats->{'retry:Network'} // 0 }
ok $t->wait_for(sub { probes() >= 1 }, 10), 'half-open probes fail';
my ($p0, $n0) = (probes(), net());
ok $t->wait_for(sub { probes() >= $p0 + 3 }, 10), 'three more probes';
my ($p1, $n1) = (probes(), net());
ok $n1 - $n0 <= $p1 - $p0 + 2,
    'while open only the probes are sent (' . ($n1 - $n0) . ' network failures for '
    . ($p1 - $p0) . ' probes)';
$t->start_mock;
ok $t->wait_for(sub { all_pushed(@ids) }, 30, 'backlog pushed'), 'every queued push reaches APNs after it returns';
ok $t->wait_for(\&drained, 10), 'queue, pending set and processing lists empty';
ok !(grep { !$t->enr($_)->{push_ms} } @ids), 'every enrollment has push_ms';
like $t->apnsd_log('a1'), qr/circuit breaker closed/, 'breaker closed again';
is $t->stop_apnsd($a), 0, 'clean exit';

# ---- SIGKILL mid-batch, restart under the same name --------------------------
$t->stop_mock;
reset_log();
$t->start_mock(delay => 300);
@ids = map { sprintf 'KILL%04d', $_ } 1 .. 1000;
$t->enroll_many($T, @ids);
$t->produce_many(@ids);
$a = $t->start_apnsd(cert => [$c->{pem}], name => 'k1',
                     opts => { connections => 1, streams => 50 });
ok $t->wait_for(sub { scalar($t->requests) >= 100 }, 20), 'sender busy';
kill 'KILL', $a;
waitpid $a, 0;
delete $t->{apnsd}{$a};
my $sent = scalar $t->requests;
ok $sent < 1000, "killed mid-batch ($sent of 1000 sent)";
ok $t->llen('mdm:push:proc:k1') > 0, 'its claimed pushes are still in its processing list';
$a = $t->start_apnsd(cert => [$c->{pem}], name => 'k1');
ok $t->wait_for(sub { all_pushed(@ids) }, 60, 'all pushed after restart'),
    'after the restart every queued push reached APNs at least once';
ok $t->wait_for(\&drained, 10), 'nothing left behind';
like $t->apnsd_log('k1'), qr/took over \d+ pushes left by a previous run in mdm:push:proc:k1/,
    'the restart says it took over the old list';
is $t->stop_apnsd($a), 0, 'clean exit';

# ---- another instance takes over the list of a dead one ---------------------------
reset_log();
@ids = map { sprintf 'PEER%04d', $_ } 1 .. 400;
$t->enroll_many($T, @ids);
$t->produce_many(@ids);
my $dead = $t->start_apnsd(cert => [$c->{pem}], name => 'dead',
                           opts => { connections => 1, streams => 20 });
ok $t->wait_for(sub { scalar($t->requests) >= 20 }, 20), 'first instance busy';
kill 'KILL', $dead;
waitpid $dead, 0;
delete $t->{apnsd}{$dead};
ok $t->llen('mdm:push:proc:dead') > 0, 'dead instance left a processing list';
my $b = $t->start_apnsd(cert => [$c->{pem}], name => 'b1');
ok $t->wait_for(sub { all_pushed(@ids) }, 60, 'taken over'),
    'a second instance pushes everything the dead one held';
ok $t->wait_for(\&drained, 10), 'nothing left behind';
ok !$t->redis->sismember('mdm:push:senders', 'dead'), 'dead instance unregistered';
like $t->apnsd_log('b1'), qr/sender dead is gone \(no heartbeat\): \d+ of its pushes queued again/,
    'the takeover is logged';
ok $t->stats->{recovered} > 0, 'stats: recovered';

# ---- two instances at once share the queue ----------------------------------------------
reset_log();
$t->stop_mock;
$t->start_mock(delay => 20);
my $b2 = $t->start_apnsd(cert => [$c->{pem}], name => 'b2');
ok $t->wait_for(sub { $t->redis->sismember('mdm:push:senders', 'b2') }, 10),
    'the second instance registered';
@ids = map { sprintf 'PAIR%04d', $_ } 1 .. 2000;
$t->enroll_many($T, @ids);
$t->produce_many(@ids);
ok $t->wait_for(sub { all_pushed(@ids) }, 60), 'two instances push everything';
ok $t->wait_for(\&drained, 10), 'nothing left behind';
my $n = $t->token_counts;
my $dups = grep { $n->{ $t->token_of($_) } > 1 } @ids;
is $dups, 0, 'no device pushed twice';
my %conns;
$conns{ $_->{conn} }++ for $t->requests;
ok keys(%conns) >= 2, 'both instances sent (' . scalar(keys %conns) . ' connections)';

# ---- the same name twice: the newer process wins, the older one exits -----------
my $dup = $t->start_apnsd(cert => [$c->{pem}], name => 'b2', opts => { log => $t->dir . '/apnsd-b2dup.log' });
ok $t->wait_for(sub { waitpid($b2, 1) == $b2 }, 10), 'older process with the name exits';
is $? >> 8, 1, '... with status 1';
delete $t->{apnsd}{$b2};
like $t->apnsd_log('b2'), qr/\[crit\] NAMECONFLICT another mdm-apnsd runs as b2/,
    'name conflict reported';
is $t->stop_apnsd($dup), 0, 'the newer one keeps running and exits cleanly';

# ---- SIGTERM: in-flight requests finish, the rest goes back to the queue ---------------------
is $t->stop_apnsd($b, 'TERM'), 0, 'b1 stopped';
reset_log();
$t->stop_mock;
$t->start_mock(delay => 500);
@ids = map { sprintf 'TERM%04d', $_ } 1 .. 500;
$t->enroll_many($T, @ids);
$t->produce_many(@ids);
$b = $t->start_apnsd(cert => [$c->{pem}], name => 'b1',
                     opts => { connections => 1, streams => 30 });
ok $t->wait_for(sub { scalar($t->requests) >= 30 }, 20), 'busy';
my $t0 = time;
is $t->stop_apnsd($b, 'TERM'), 0, 'SIGTERM: exit 0';
ok time - $t0 < 3, 'in-flight requests finish quickly';
my %got = map { $_->{token} => 1 } $t->requests;
my @answered = grep { $t->enr($_)->{push_ms} } @ids;
is scalar(@answered), scalar(keys %got), 'every request sent before SIGTERM got its answer recorded';
my %q = map { $_ => 1 } $t->redis->lrange('mdm:push:q', 0, -1);
ok !(grep { !$q{$_} && !$t->enr($_)->{push_ms} } @ids), 'everything else is back in mdm:push:q';
is $t->llen('mdm:push:proc:b1'), 0, 'no processing list left';
is $t->redis->scard('mdm:push:pending'), scalar(keys %q), 'requeued ids are pending again';
$b = $t->start_apnsd(cert => [$c->{pem}], name => 'b1');
ok $t->wait_for(sub { all_pushed(@ids) }, 60), 'after a restart the rest goes out';

$t->finish_apnsd(allow => qr/NAMECONFLICT another mdm-apnsd runs as b2/);
$t->finish;
done_testing;
