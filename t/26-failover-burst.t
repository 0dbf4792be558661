#!/usr/bin/perl
# Failover through Sentinel mid-burst (issue 14): one primary, one replica,
# three sentinels; check-ins and command cycles go on while the primary gets
# SIGKILL. Devices see only 200 and 503 + Retry-After; service resumes on
# the promoted replica (time from the kill to the first 200 is printed);
# with replicas=1 every write that got a 200 is on the new primary (counted),
# with replicas=0 what was lost is printed. With replicas=1 and a single
# replica, writes wait (503) until a replica is back: the killed primary is
# restarted, as its supervisor would, once a majority of the sentinels
# report the promotion; it comes back as a replica and the module never
# writes to it.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(sleep time);
use MdmTest;
use MdmSentinel;

my @devs = map { "FO$_" } 1 .. 4;

sub uuid_of {
    ($_[0]{body} =~ m{<key>CommandUUID</key>\s*<string>([^<]+)})[0] // ''
}

sub cmd_plist {
    my ($uuid) = @_;
    return MdmTest::plist(CommandUUID => $uuid,
        Command => { dict => [RequestType => 'DeviceInformation',
                              Queries => ['SerialNumber']] });
}

sub run {
    my ($replicas) = @_;
    my $t = MdmTest->new(no_redis => 1);
    my $c = MdmSentinel->new($t);
    my $opt = $replicas ? " replicas=$replicas wait_timeout=500" : '';
    $t->start_nginx($t->conf(redis => $c->spec . $opt, redis_timeout => '2s'),
                    workers => 2);
    $t->enroll($_, lc $_) for @devs;

    # commands to work through, on the replica too before the burst starts
    for my $d (@devs) {
        for my $i (1 .. 80) {
            $c->cli(0, 'FCALL', 'mdm_enqueue', 0, cmd_plist("C-$d-$i"), 5, 0,
                    1, $d);
        }
    }
    like $c->cli(0, 'WAIT', 1, 2000), qr/^1/, "r=$replicas: queue replicated";

    my (%st, %acked_tu, %acked_res, $t_kill, $t_back, $after, $t_restart);
    my $tally = sub {
        my ($r) = @_;
        my $s = $r->{status};
        if ($s == 200) {
            $t_back //= time if $t_kill;
            $after++ if $t_back;
        } elsif ($s == 503) {
            $st{no_retry_after}++ unless $r->{headers}{'retry-after'};
        }
        $st{$s}++;
        return $s == 200;
    };

    my $deadline = time + 60;
    my $i = 0;
    while (time < $deadline && ($after // 0) < 60) {
        my $d = $devs[$i++ % @devs];
        my $r = $t->put('/mdm/checkin', $t->token_update($d), cert => lc $d);
        $acked_tu{$d}++ if $tally->($r);

        $r = $t->put('/mdm/connect',
                     MdmTest::plist(UDID => $d, Status => 'Idle'),
                     cert => lc $d);
        if ($tally->($r) && (my $u = uuid_of($r))) {
            # the device retries its result until it is taken
            my $until = time + 20;
            while (time < $until) {
                $r = $t->put('/mdm/connect', MdmTest::plist(UDID => $d,
                             Status => 'Acknowledged', CommandUUID => $u),
                             cert => lc $d);
                last if $tally->($r);
                sleep 0.02;
            }
            $acked_res{"$d $u"} = 1 if $r->{status} == 200;
        }
        sleep 0.02 if !$t_back && $t_kill;

        if ($replicas && $t_kill && !$t_restart && $c->promoted(1) >= 2) {
            $c->start_redis(0);
            $t_restart = time;
        }

        if (!$t_kill && ($st{200} // 0) >= 60) {
            $t->mark_log;
            $c->kill_proc('redis0');
            $t_kill = time;
        }
    }

    ok $t_back, "r=$replicas: service resumed after the kill" or do {
        # what the sentinels and the servers thought, for the next reader
        diag("sentinel $_ says the primary is port "
             . ($c->primary_port($_) // 'none')) for 0 .. 2;
        diag("redis1 ROLE: " . join(' ', split /\n/, $c->cli(1, 'ROLE')));
        diag("sentinel0.log:\n" . join('', grep { defined } (split /^/m,
             $t->slurp('sentinel0.log'))[-25 .. -1]));
    };
    my $fo = $t_back ? sprintf('%.0f', 1000 * ($t_back - $t_kill)) : 'never';
    diag("r=$replicas: failover as devices saw it: kill -> first 200 "
         . "$fo ms"
         . ($t_restart ? sprintf(' (old primary restarted at +%.0f ms)',
                                 1000 * ($t_restart - $t_kill)) : '')
         . "; answers: "
         . join(', ', map { "$_: $st{$_}" } sort keys %st));
    is $st{no_retry_after} // 0, 0, "r=$replicas: every 503 had Retry-After";
    is_deeply [grep { !/^(200|503)$/ } grep { /^\d+$/ } keys %st], [],
        "r=$replicas: devices saw only 200 and 503";

    ok MdmTest::wait_until(sub { $c->promoted(1) >= 2 }, 10),
        "r=$replicas: the replica was promoted";

    # every acknowledged write, looked for on the new primary
    my ($lost_res, $lost_tu) = (0, 0);
    for my $k (keys %acked_res) {
        my ($d, $u) = split / /, $k;
        $lost_res++ unless $c->cli(1, 'EXISTS', "mdm:{$d}:res:$d:$u") =~ /^1/;
    }
    for my $d (@devs) {
        my ($n) = $c->cli(1, 'HGET', "mdm:{$d}:enr:$d", 'token_updates')
                  =~ /(\d+)/;
        # enroll's TokenUpdate plus each one answered 200 during the burst
        my $short = ($acked_tu{$d} // 0) + 1 - ($n // 0);
        $lost_tu += $short if $short > 0;
    }
    my $nres = keys %acked_res;
    my $ntu = 0;
    $ntu += $_ for values %acked_tu;
    diag("r=$replicas: acknowledged: $nres results, $ntu TokenUpdates; "
         . "missing on the new primary: $lost_res results, $lost_tu "
         . "TokenUpdates");
    if ($replicas) {
        is $lost_res, 0, "r=$replicas: all $nres acknowledged results there";
        is $lost_tu, 0, "r=$replicas: all $ntu acknowledged TokenUpdates there";
    }

    return ($t, $c);
}

my ($t, $c) = run(0);
$t->finish;
undef $t;
undef $c;

($t, $c) = run(1);

# --- the old primary came back: a replica now, never written to ------------
my ($ok, $n) = (0, 0);
my $demoted = sub { $c->cli(0, 'ROLE') =~ /^slave/ };
my $until = time + 20;
while (time < $until && !($demoted->() && $n >= 20)) {
    my $d = $devs[$n++ % @devs];
    $ok++ if $t->put('/mdm/checkin', $t->token_update($d),
                     cert => lc $d)->{status} == 200;
}
ok $demoted->(), 'the old primary was made a replica';
is $ok, $n, "all $n check-ins while it came back answered 200";
unlike $c->cli(0, 'INFO', 'commandstats'), qr/cmdstat_fcall/,
    'no FCALL or FCALL_RO ever reached the old primary';
my $p0 = $c->port(0);
unlike $t->log_since_mark, qr/primary is 127\.0\.0\.1:$p0\b/,
    'since the kill the module never took it for the primary';

$t->finish;
done_testing;
