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

$t->finish_apnsd;
$t->finish;
done_testing;
