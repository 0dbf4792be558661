#!/usr/bin/perl
# Bounded growth (issue 12): the sweep reaches devices that never poll,
# CheckOut ends a queue, forget deletes an enrollment completely, unknown
# reports are kept small, bulk enqueue in resumable chunks and its way
# back, a NotNow-heavy queue costs the same per request, and an Idle poll
# that got nothing is no event.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep time);
use MdmTest;

my $BIN = MdmTest::root() . '/mdmctl/mdmctl';
plan skip_all => "build mdmctl first ($BIN)" unless -x $BIN;

my $t = MdmTest->new;
$t->start_nginx($t->conf);
my $redis = $t->redis;
my $dir = $t->dir;
$ENV{MDM_REDIS} = 'unix:' . $t->redis_sock;

sub ctl { $t->mdmctl(@_) }

sub cmd {
    my ($uuid, $rt) = @_;
    return MdmTest::plist(CommandUUID => $uuid,
                          Command => { dict => [RequestType => $rt] });
}

sub enqueue { $redis->fcall('mdm_enqueue', 0, @_) }

sub report {
    my ($udid, $cert, @kv) = @_;
    return $t->put('/mdm/connect', MdmTest::plist(UDID => $udid, @kv),
                   cert => $cert);
}

sub uuid_of {
    ($_[0]{body} =~ m{<key>CommandUUID</key>\s*<string>([^<]+)})[0] // ''
}

sub status_of {
    my ($e, $u) = @_;
    my %r = @{ $redis->fcall('mdm_result', 0, $e, $u) // [] };
    return $r{status} // '';
}

$t->enroll($_, lc $_) for qw(DEV1 DEV2 DEV3);

# --- no event for an Idle poll that got nothing -----------------------------
my $n = $t->events_len;
is report('DEV1', 'dev1', Status => 'Idle')->{status}, 200, 'Idle, empty queue';
is $t->events_len, $n, 'no event for it';
enqueue(cmd('EV-1', 'ProfileList'), 5, 0, 1, 'DEV1');
is uuid_of(report('DEV1', 'dev1', Status => 'Idle')), 'EV-1', 'Idle gets one';
is $t->events_len, $n + 1, 'an Idle poll that got a command is an event';
report('DEV1', 'dev1', Status => 'Acknowledged', CommandUUID => 'EV-1');
is $t->events_len, $n + 2, 'a result is an event';
is +{ @{ $redis->xrevrange('mdm:audit', '+', '-', 'COUNT', 1)->[0][1] } }->{type},
    'Enqueue', 'the enqueue is in mdm:audit';

# --- the sweep: devices that never poll again --------------------------------
my @fleet = map { sprintf 'GONE-%04d', $_ } 1 .. 1000;
$redis->hset("mdm:{$_}:enr:$_", 'type', 'Device', 'enabled', '1', sub {})
    for @fleet;
$redis->wait_all_responses;
my $base = $redis->dbsize;
my $r = enqueue(cmd('SW-1', 'DeviceInformation'), 5, 1, 1, @fleet, 'DEV2');
is $r->[1], 1001, 'a command with a 1 s expiry to 1,001 targets';
ok $redis->exists('mdm:cmd:SW-1'), 'its body is stored';
is uuid_of(report('DEV2', 'dev2', Status => 'Idle')), 'SW-1', 'DEV2 polls';
report('DEV2', 'dev2', Status => 'Acknowledged', CommandUUID => 'SW-1');
is $redis->hget('mdm:cmd:SW-1', 'refs'), 1000, '1,000 never poll';

is_deeply [$redis->fcall('mdm_sweep', 0)], [0, 0, 0],
    'sweep before expiry: nothing';
ok MdmTest::wait_until(sub { $redis->fcall('mdm_sweep', 0, 50)->[0] > 0 }, 5),
    'after the expiry, a sweep with budget 50 expires some';
my $left = $redis->hget('mdm:cmd:SW-1', 'refs');
ok $left && $left < 1000 && $left >= 800, "bounded: $left still held";
$r = ctl('gc');
is $r->{rc}, 0, 'mdmctl gc' or diag $r->{err};
like $r->{out}, qr/^\d+ queue items expired, 1 command released\n$/, 'gc output';
ok !$redis->exists('mdm:cmd:SW-1'), 'body released';
ok !$redis->exists('mdm:sweep'), 'no cursor left';
is $redis->zscore('mdm:expiry', 'SW-1'), undef, 'off the expiry index';
is status_of('GONE-0123', 'SW-1'), 'Expired', 'a silent target: Expired';
is status_of('DEV2', 'SW-1'), 'Acknowledged', 'the one who answered keeps it';
is scalar(grep { $redis->exists("mdm:{$_}:q:$_") } @fleet), 0, 'queues gone';
ok $redis->ttl('mdm:cmdt:SW-1') > 0, 'per-target state expires with results';
is_deeply [$redis->fcall('mdm_sweep', 0)], [0, 0, 0], 'nothing due';
like +(ctl('gc', '--json'))->{out}, qr/"expired":\s*0/, 'gc --json';

# no expiry given: command_max_age bounds it
enqueue(cmd('AGE-1', 'ProfileList'), 5, 0, 1, 'GONE-0001');
my $x = $redis->hget('mdm:cmd:AGE-1', 'expires_ms');
ok abs($x - (time * 1000 + 2592000 * 1000)) < 60000,
    'expiry 0: expires after command_max_age (30 days)';
$redis->fcall('mdm_cancel', 0, 'GONE-0001', 'AGE-1');

# --- CheckOut ends the queue -------------------------------------------------
enqueue(cmd("CO-$_", 'ProfileList'), 5, 0, 1, 'DEV3') for 1 .. 3;
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'CheckOut',
                                          UDID => 'DEV3'),
           cert => 'dev3')->{status}, 200, 'CheckOut';
is $redis->zcard('mdm:{DEV3}:q:DEV3'), 0, 'queue ended';
is status_of('DEV3', 'CO-2'), 'CheckedOut', 'final status CheckedOut';
ok !$redis->exists('mdm:cmd:CO-1'), 'bodies released';

# --- unknown reports: small and capped ---------------------------------------
my $big = 'x' x 20_000;
for my $i (1 .. 40) {
    $r = report('DEV1', 'dev1', Status => 'Error', CommandUUID => "NEVER-$i",
           ErrorChain => [{ dict => [ErrorCode => 1, Pad => $big] }]);
    die "report: $r->{status}" unless $r->{status} == 200;
}
is $redis->llen('mdm:{DEV1}:unk:DEV1'), 16, '40 unknown reports, 16 kept';
ok $redis->memory('usage', 'mdm:{DEV1}:unk:DEV1') < 40_000,
    'each kept to 1 KiB of its body';
ok !$redis->exists('mdm:{DEV1}:res:DEV1:NEVER-40'), 'no result hash for them';
my %u = @{ $redis->fcall('mdm_result', 0, 'DEV1', 'NEVER-40') };
is_deeply [@u{qw(status unknown raw_capped)}], ['Error', 1, 1],
    'mdm_result: the latest, marked unknown and capped';
is length $u{raw}, 1024, '1 KiB of its body';
is $redis->fcall('mdm_result', 0, 'DEV1', 'NEVER-1'), undef,
    'the oldest ones are gone';

# --- NotNow: a long queue of NotNow'd items costs the same per request --------
enqueue(cmd(sprintf('NN-%03d', $_), 'ProfileList'), 5, 0, 1, 'DEV2')
    for 1 .. 200;
my $u = uuid_of(report('DEV2', 'dev2', Status => 'Idle'));
for (1 .. 199) {
    $u = uuid_of(report('DEV2', 'dev2', Status => 'NotNow', CommandUUID => $u));
}
is $u, 'NN-200', 'after 199 NotNows the 200th item';
is $redis->scard('mdm:{DEV2}:nn:DEV2'), 199, '199 skipped this session';
$r = report('DEV2', 'dev2', Status => 'NotNow', CommandUUID => $u);
is $r->{body}, '', 'all NotNow: nothing more this session';
is uuid_of(report('DEV2', 'dev2', Status => 'Idle')), 'NN-001',
    'the next session starts at the first again';
$redis->fcall('mdm_clear', 0, 'DEV2');

# --- bulk enqueue in chunks: resumable, and its way back ----------------------
my @bulk = map { sprintf 'BULK-%04d', $_ } 1 .. 3000;
$redis->hset("mdm:{$_}:enr:$_", 'type', 'Device', 'enabled', '1', sub {})
    for @bulk;
$redis->wait_all_responses;
my $plist = cmd('BULK-1', 'SecurityInfo');
$t->spew('bulk.plist', $plist);
# an interrupted run: only its first chunk landed
$r = ctl({ stdin => join("\n", @bulk[0 .. 999], '') }, 'enqueue', '--no-push',
         '--plist', "$dir/bulk.plist", '-');
is $r->{rc}, 0, 'a first chunk' or diag $r->{err};
$r = ctl({ stdin => join("\n", @bulk, '') }, 'enqueue', '--json', '--no-push',
         '--chunk', 1000, '--plist', "$dir/bulk.plist", '-');
is $r->{rc}, 0, 'the same enqueue again completes it' or diag $r->{err};
like $r->{out}, qr/"targets":\s*2000/, '2,000 queued now';
like $r->{out}, qr/"already":\s*1000/, '1,000 already held it';
is $redis->hget('mdm:cmd:BULK-1', 'refs'), 3000, 'every target holds it once';
is $redis->zcard('mdm:{BULK-2500}:q:BULK-2500'), 1, 'queued on a late target';
$r = $redis->fcall('mdm_cancel_command', 0, 'BULK-1', 1000);
is $r->[1], 1, 'mdm_cancel_command: bounded steps, more to do';
$r = ctl('cancel', '--command', 'BULK-1');
is $r->{rc}, 0, 'mdmctl cancel --command' or diag $r->{err};
like $r->{out}, qr/^BULK-1 canceled on \d+ targets\n$/, 'cancel --command output';
ok !$redis->exists('mdm:cmd:BULK-1'), 'rolled back: body released';
is scalar(grep { $redis->exists("mdm:{$_}:q:$_") } @bulk), 0,
    'rolled back: no queue holds it';
is status_of('BULK-0007', 'BULK-1'), 'Canceled', 'status Canceled';

# --- forget -------------------------------------------------------------------
my $mac = 'MAC-F';
$t->enroll($mac, 'macf');
is $t->put('/mdm/checkin', $t->token_update($mac, UserID => 'U1'),
           cert => 'macf')->{status}, 200, 'a user channel';
enqueue(cmd('F-1', 'ProfileList'), 5, 0, 1, $mac, "$mac:U1");
enqueue(cmd('F-2', 'ProfileList'), 5, 0, 1, $mac, 'DEV1');
is uuid_of(report($mac, 'macf', Status => 'Idle')), 'F-1', 'a result first';
report($mac, 'macf', Status => 'Acknowledged', CommandUUID => 'F-1');
$redis->sadd("mdm:{$mac}:nn:$mac", 'F-2');      # a v3 leftover under the device
my $sha = $redis->hget("mdm:{$mac}:enr:$mac", 'cert');
ok $redis->exists("mdm:cert:$sha"), 'bound';

$r = ctl('forget', 'NOPE', $mac);
is $r->{rc}, 1, 'forget with an unknown id: refused';
like $r->{err}, qr/unknown enrollment id NOPE/, 'one line naming it';
ok $redis->exists("mdm:{$mac}:enr:$mac"), 'nothing deleted';

$r = ctl('forget', $mac);
is $r->{rc}, 0, 'mdmctl forget' or diag $r->{err};
like $r->{out}, qr/^2 enrollments forgotten, 2 queued commands ended, \d+ result keys? deleted\n$/,
    'forget output';
is_deeply [$redis->keys("mdm:{$mac}:*")], [], 'no key left under the device';
is_deeply [map { { @{ $_->[1] } }->{type} }
           @{ $redis->xrevrange('mdm:audit', '+', '-', 'COUNT', 2) }],
    ['Forget', 'Forget'], 'both channels in mdm:audit';
ok !$redis->exists("mdm:cert:$sha"), 'binding gone both ways';
is $redis->zscore('mdm:enrollments', $mac), undef, 'out of the index';
is $redis->zscore('mdm:enrollments', "$mac:U1"), undef, 'user channel too';
is $redis->hget('mdm:cmd:F-2', 'refs'), 1, 'a shared body keeps its other target';
is $redis->hget('mdm:cmdt:F-2', $mac), 'Forgotten', 'target status Forgotten';
is $t->put('/mdm/connect', MdmTest::plist(UDID => $mac, Status => 'Idle'),
           cert => 'macf')->{status}, 403, 'the device is refused now';
is $t->put('/mdm/checkin', $t->authenticate($mac), cert => 'macf')->{status},
    200, 'and may enroll again';

$t->finish;
done_testing;
