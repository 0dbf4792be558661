#!/usr/bin/perl
# mdm-apnsd under maxmemory (issue 15 item 8): Redis refuses every write
# (OOM: FCALL of the write functions, BLMOVE is denyoom) while answers come
# back from APNs. The sender must back off instead of reconnecting in a
# loop, keep the outcomes until Redis takes them (so nothing it holds is
# adopted and pushed again), and write them once memory is back.
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
my $r = $t->redis;

sub conns { $r->info('stats')->{total_connections_received} }
sub rejected {      # calls of a command Redis refused (OOM), INFO commandstats
    my ($cmd) = @_;
    my $s = $r->info('commandstats')->{"cmdstat_$cmd"} // '';
    return $s =~ /rejected_calls=(\d+)/ ? $1 : 0;
}
sub waiter_id {
    for my $l (split /\n/, $r->client('LIST')) {
        return $1 if $l =~ /\bid=(\d+)\b.*\bcmd=blmove\b/;
    }
    return undef;
}

my @ids = map { "OOM$_" } 1 .. 20;
$t->enroll_many($T, @ids);
$t->start_mock(delay => 1500);
my $p = $t->start_apnsd(cert => [$c->{pem}]);
ok $t->wait_for(sub { defined waiter_id() }, 10), 'idle sender waits in BLMOVE';
$t->produce_many(@ids);
ok $t->wait_for(sub { scalar($t->requests) == @ids }, 15), 'all pushes sent';

# ---- Redis full while the answers are on their way --------------------------
$r->config('SET', 'maxmemory', '1');
like eval { $r->hset('probe', 'a', 'b'); 'written' } // $@, qr/OOM/,
    'Redis refuses writes (OOM)';
ok $t->wait_for(sub { $t->apnsd_log =~ /\[error\] redis .*OOM.*backing off/ }, 10),
    'the refused outcomes are logged once, with the backoff';
# wake the waiter: its next BLMOVE is refused with OOM as well
my $w = waiter_id();
ok defined $w, 'waiter found';
$r->client('UNBLOCK', $w) if defined $w;
ok $t->wait_for(sub { rejected('blmove') >= 1 }, 5), 'the waiter meets OOM';

# A window of 3 s (10 recovery intervals of 300 ms): a measurement, not a
# synchronisation. Fails at once on a duplicate push.
my ($c0, $b0, $f0) = (conns(), rejected('blmove'), rejected('fcall'));
my $until = time + 3;
my $dup = 0;
$t->wait_for(sub { $dup = scalar($t->requests) > @ids; $dup || time >= $until }, 5);
my $dc = conns() - $c0;
my $db = rejected('blmove') - $b0;
my $df = rejected('fcall') - $f0;
ok !$dup, 'no push sent again while Redis refuses the outcomes ('
    . scalar($t->requests) . ' requests for ' . scalar(@ids) . ' ids)';
ok $dc <= 2, "no reconnect loop: $dc connections in 3 s";
ok $db <= 10, "the waiter backs off: $db BLMOVE refused in 3 s";
ok $df <= 6 * (@ids + 3), "writes back off: $df FCALL refused in 3 s";
my $lines = () = $t->apnsd_log =~ /\[error\] redis/g;
ok $lines <= 3, "one error line per outage, not per attempt ($lines)";
ok kill(0, $p), 'sender keeps running';
is scalar(grep { $t->enr($_)->{push_ms} } @ids), 1,
    'only the outcome answered before the OOM is written';

# ---- memory back -----------------------------------------------------------------------
$r->config('SET', 'maxmemory', '0');
ok $t->wait_for(sub { !grep { !$t->enr($_)->{push_ms} } @ids }, 15),
    'every kept outcome is written once Redis takes writes again';
ok $t->wait_for(sub { $t->llen('mdm:push:proc:a1') == 0 }, 10), 'processing list empty';
like $t->apnsd_log, qr/writes accepted again/, 'the end of the outage is logged';
is scalar(grep { $_->{result} eq 'ok' } $t->events(type => 'push')), scalar(@ids),
    'one ok event per push';
is scalar($t->requests), scalar(@ids), 'nothing pushed twice';

# still working afterwards, and the waiter is back
$t->enroll('AFTER1', topic => $T);
$t->produce('AFTER1');
ok $t->wait_for(sub { $t->enr('AFTER1')->{push_ms} }, 10), 'new pushes go out';

is $t->stop_apnsd($p), 0, 'stopped';

# ---- the bound: max-outcomes ----------------------------------------------------------------
# APNs answers 503 (each retry is an outcome to write) while Redis refuses
# writes. Backing off already slows the sender (one round of enrollment
# reads per backoff step), yet each round adds outcomes; at max-outcomes it
# stops sending instead of growing.
$t->rules({ default => { status => 503 } });
my @b = map { "MAX$_" } 1 .. 20;
$t->enroll_many($T, @b);
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'b1',
                     opts => { 'max-outcomes' => 10, 'breaker-threshold' => 1000000,
                               'retry-base' => '50ms', 'retry-max' => '100ms' });
my %bt = map { $t->token_of($_) => 1 } @b;
sub breqs { scalar grep { $bt{ $_->{token} } } $t->requests }
$t->produce_many(@b);
ok $t->wait_for(sub { breqs() >= 40 }, 15), 'retrying against a 503';
$r->config('SET', 'maxmemory', '1');
ok $t->wait_for(sub { $t->apnsd_log('b1') =~ /\[warn\] \d+ outcomes wait for Redis \(max-outcomes\)/ }, 15),
    'the bound is reached and logged';
my $n0 = breqs();
# a window longer than the largest backoff step (5 s + 25 %), in which a
# sender without the bound sends another round of 20
$until = time + 7;
$t->wait_for(sub { breqs() > $n0 + 10 || time >= $until }, 9);
my $grown = breqs() - $n0;
ok $grown <= 10, "at the bound nothing new is sent ($grown requests in 7 s, 20 ids)";
$r->config('SET', 'maxmemory', '0');
$t->rules({ default => { status => 200 } });
ok $t->wait_for(sub { !grep { !$t->enr($_)->{push_ms} } @b }, 20),
    'memory back: the outcomes are written and the pushes delivered';
like $t->apnsd_log('b1'), qr/outcomes below max-outcomes again: sending resumes/,
    'resuming is logged';

is $t->stop_apnsd($p), 0, 'stopped';

# ---- an error Redis keeps answering for one outcome (a damaged data set) ------------
# mdm:events is not a stream: every mdm_push_done fails with WRONGTYPE. The
# outcome is kept and retried with backoff, not dropped (which would push
# the id again at the next re-read of the processing list) and not resent
# in a loop.
sub errstat {
    my $s = $r->info('errorstats')->{errorstat_WRONGTYPE} // '';
    return $s =~ /count=(\d+)/ ? $1 : 0;
}
$r->del('mdm:events');
$r->set('mdm:events', 'not a stream');
$t->enroll('DMG1', topic => $T);
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'd1');
my $dt = $t->token_of('DMG1');
$t->produce('DMG1');
ok $t->wait_for(sub { errstat() >= 1 }, 10), 'the outcome is refused (WRONGTYPE)';
my $e0 = errstat();
$until = time + 3;          # a measurement window, as above
$t->wait_for(sub { errstat() > $e0 + 10 || time >= $until }, 5);
my $de = errstat() - $e0;
ok $de <= 10, "refused outcome retried with backoff ($de attempts in 3 s)";
is scalar(grep { $_->{token} eq $dt } $t->requests), 1, 'and not pushed again';
$r->del('mdm:events');
ok $t->wait_for(sub { $t->enr('DMG1')->{push_ms} }, 10), 'written once the data set is repaired';
is scalar(grep { $_->{token} eq $dt } $t->requests), 1, 'pushed once';

$t->finish_apnsd;
$t->finish;
done_testing;
