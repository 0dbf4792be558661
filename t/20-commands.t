#!/usr/bin/perl
# Command channel and queue: reports in, next command out, admin functions.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep);
use MdmTest;

my $t = MdmTest->new;
$t->start_nginx($t->conf, workers => 2);
my $redis = $t->redis;
my $r;

sub cmd {
    my ($uuid, $rt, @extra) = @_;
    return MdmTest::plist(CommandUUID => $uuid,
        Command => { dict => [RequestType => $rt, @extra] });
}

sub enqueue {
    my ($plist, $prio, $exp, $nopush, @ids) = @_;
    return $redis->fcall('mdm_enqueue', 0, $plist, $prio, $exp, $nopush, @ids);
}

sub report {
    my ($udid, $cert, @kv) = @_;
    return $t->put('/mdm/connect', MdmTest::plist(UDID => $udid, @kv),
                   cert => $cert);
}

sub uuid_of { ($_[0]{body} =~ m{<key>CommandUUID</key>\s*<string>([^<]+)})[0] // '' }

my @devs = map { "DEV$_" } 1 .. 3;
$t->enroll($_, lc $_) for @devs;

# --- full lifecycle for several devices ---------------------------------
my $di = cmd('DI-1', 'DeviceInformation',
             Queries => ['SerialNumber', 'OSVersion', 'HostName']);
my $res = enqueue($di, 5, 0, 0, @devs);
is_deeply $res, ['DI-1', 3, 3, 0], 'enqueued to three devices, three pushes';
is $redis->hget('mdm:cmd:DI-1', 'refs'), 3, 'body stored once, three refs';
is $redis->llen('mdm:push:q'), 3, 'push requests written';

my $capture = $t->slurp(MdmTest::root() . '/t/data/DeviceInformation.1.plist');
for my $d (@devs) {
    $r = report($d, lc $d, Status => 'Idle');
    is $r->{status}, 200, "$d: Idle answered";
    is $r->{headers}{'content-type'}, 'application/xml', "$d: xml";
    is uuid_of($r), 'DI-1', "$d: got the command";
    like $r->{body}, qr{<string>HostName</string>}, "$d: command body intact";

    (my $ack = $capture) =~ s/66ADE930-5FDF-5EC4-8429-15640684C489/$d/g;
    $ack =~ s/76eda240-5488-4989-8339-f2ae160113c4/DI-1/;
    $r = $t->put('/mdm/connect', $ack, cert => lc $d);
    is $r->{status}, 200, "$d: Acknowledged";
    is $r->{body}, '', "$d: zero-byte body, nothing more";
    is $r->{headers}{'content-length'}, 0, "$d: Content-Length 0";
    my %res = @{ $redis->fcall('mdm_result', 0, $d, 'DI-1') };
    is $res{status}, 'Acknowledged', "$d: result status";
    is $res{raw}, $ack, "$d: full raw result kept";
    is $res{request_type}, 'DeviceInformation', "$d: request type";
}
ok !$redis->exists('mdm:cmd:DI-1'), 'body deleted when no target needs it';
is_deeply [sort map { "@$_" } @{ $redis->fcall('mdm_command_status', 0, 'DI-1') }],
    [map { "$_ Acknowledged" } @devs], 'every target status';
ok $redis->ttl('mdm:{DEV1}:res:DEV1:DI-1') > 0, 'result expires';

# --- priority, then age -----------------------------------------------------
enqueue(cmd('P-low', 'ProfileList'), 1, 0, 1, 'DEV1');
enqueue(cmd('P-old', 'CertificateList'), 5, 0, 1, 'DEV1');
enqueue(cmd('P-high', 'SecurityInfo'), 9, 0, 1, 'DEV1');
enqueue(cmd('P-new', 'InstalledApplicationList'), 5, 0, 1, 'DEV1');
my $q = $redis->fcall('mdm_queue', 0, 'DEV1');
is_deeply [map { $_->[0] } @$q], [qw(P-high P-old P-new P-low)], 'queue view ordered';
is_deeply [@{ $q->[0] }[1, 2, 3]], ['SecurityInfo', 'Queued', 0], 'queue view fields';
my @got;
$r = report('DEV1', 'dev1', Status => 'Idle');
while (length $r->{body}) {
    push @got, uuid_of($r);
    $r = report('DEV1', 'dev1', Status => 'Acknowledged', CommandUUID => $got[-1]);
}
is_deeply \@got, [qw(P-high P-old P-new P-low)], 'delivered by priority, then age';

# --- NotNow ---------------------------------------------------------------
enqueue(cmd('N-1', 'InstallProfile', Payload => { data => 'x' }), 5, 0, 1, 'DEV2');
enqueue(cmd('N-2', 'ProfileList'), 5, 0, 1, 'DEV2');
$r = report('DEV2', 'dev2', Status => 'Idle');
is uuid_of($r), 'N-1', 'first item sent';
$r = report('DEV2', 'dev2', Status => 'NotNow', CommandUUID => 'N-1');
is uuid_of($r), 'N-2', 'after NotNow: the next other item';
$r = report('DEV2', 'dev2', Status => 'Acknowledged', CommandUUID => 'N-2');
is $r->{body}, '', 'NotNow item skipped for the rest of the session';
$q = $redis->fcall('mdm_queue', 0, 'DEV2');
is_deeply [@{ $q->[0] }[0, 2, 3]], ['N-1', 'NotNow', 1], 'NotNow counted and kept';
$r = report('DEV2', 'dev2', Status => 'Idle');
is uuid_of($r), 'N-1', 'NotNow item comes back on the next session';
$r = report('DEV2', 'dev2', Status => 'NotNow', CommandUUID => 'N-1');
is $r->{body}, '', 'NotNow again: nothing else due';
is $redis->fcall('mdm_queue', 0, 'DEV2')->[0][3], 2, 'NotNow count 2';

# --- Error with ErrorChain --------------------------------------------------
$r = report('DEV2', 'dev2', Status => 'Idle');
my $err = MdmTest::plist(UDID => 'DEV2', Status => 'Error', CommandUUID => 'N-1',
    ErrorChain => [{ dict => [ErrorCode => { int => 4001 },
        ErrorDomain => 'MCProfileErrorDomain',
        LocalizedDescription => 'Profile installation failed.'] }]);
$r = $t->put('/mdm/connect', $err, cert => 'dev2');
is $r->{status}, 200, 'Error report accepted';
my %res = @{ $redis->fcall('mdm_result', 0, 'DEV2', 'N-1') };
is $res{status}, 'Error', 'Error finishes the item';
like $res{raw}, qr/MCProfileErrorDomain/, 'ErrorChain kept';
is $redis->zcard('mdm:{DEV2}:q:DEV2'), 0, 'queue empty';

# --- CommandFormatError, unknown and repeated reports ------------------------
enqueue(cmd('F-1', 'Bogus'), 5, 0, 1, 'DEV3');
$r = report('DEV3', 'dev3', Status => 'Idle');
$r = report('DEV3', 'dev3', Status => 'CommandFormatError', CommandUUID => 'F-1');
is $r->{status}, 200, 'CommandFormatError accepted';
is { @{ $redis->fcall('mdm_result', 0, 'DEV3', 'F-1') } }->{status},
    'CommandFormatError', 'CommandFormatError finishes the item';
enqueue(cmd('F-2', 'ProfileList'), 5, 0, 1, 'DEV3');
$r = report('DEV3', 'dev3', Status => 'Acknowledged', CommandUUID => 'NEVER-SEEN');
is $r->{status}, 200, 'unknown CommandUUID tolerated';
is uuid_of($r), 'F-2', 'and the next command returned';
is { @{ $redis->fcall('mdm_result', 0, 'DEV3', 'NEVER-SEEN') } }->{unknown}, 1,
    'unknown report stored as such';
$r = report('DEV3', 'dev3', Status => 'Acknowledged', CommandUUID => 'F-2');
$r = report('DEV3', 'dev3', Status => 'Acknowledged', CommandUUID => 'F-2');
is $r->{status}, 200, 'repeated report tolerated';
is { @{ $redis->fcall('mdm_result', 0, 'DEV3', 'F-2') } }->{unknown}, undef,
    'first result kept';

# --- expiry ---------------------------------------------------------------
enqueue(cmd('E-1', 'ProfileList'), 5, 1, 1, 'DEV3');
sleep 1.2;
$r = report('DEV3', 'dev3', Status => 'Idle');
is $r->{body}, '', 'expired item not sent';
is { @{ $redis->fcall('mdm_result', 0, 'DEV3', 'E-1') } }->{status}, 'Expired',
    'Expired result';

# --- cancel and clear ---------------------------------------------------------
enqueue(cmd('C-1', 'ProfileList'), 5, 0, 1, 'DEV1', 'DEV2');
enqueue(cmd('C-2', 'ProfileList'), 5, 0, 1, 'DEV1');
is $redis->fcall('mdm_cancel', 0, 'DEV1', 'C-1'), 1, 'cancel';
is $redis->fcall('mdm_cancel', 0, 'DEV1', 'C-1'), 0, 'cancel again: nothing';
is $redis->hget('mdm:cmd:C-1', 'refs'), 1, 'other target still holds the body';
is $redis->fcall('mdm_clear', 0, 'DEV1'), 1, 'clear';
is $redis->fcall('mdm_clear', 0, 'DEV2'), 1, 'clear other';
ok !$redis->exists('mdm:cmd:C-1') && !$redis->exists('mdm:cmd:C-2'),
    'bodies gone';
is { @{ $redis->fcall('mdm_result', 0, 'DEV1', 'C-1') } }->{status}, 'Canceled',
    'canceled result';
is report('DEV1', 'dev1', Status => 'Idle')->{body}, '', 'nothing left';

# --- coalescing -------------------------------------------------------------
$redis->del('mdm:push:q', 'mdm:push:pending');
enqueue(cmd("K-$_", 'ProfileList'), 5, 0, 0, 'DEV1') for 1 .. 10;
is $redis->llen('mdm:push:q'), 1, 'ten enqueues to one device: one push';
is $redis->fcall('mdm_push', 0, 'DEV1', 'DEV2'), 1, 'push only: coalesced';
is $redis->llen('mdm:push:q'), 2, 'one more pending push';
$redis->fcall('mdm_clear', 0, 'DEV1');

# --- admin views ------------------------------------------------------------
my $list = $redis->fcall('mdm_enrollments', 0, 0, 10);
is scalar(@$list), 3, 'enrollments listed';
is_deeply [@{ (grep { $_->[0] eq 'DEV1' } @$list)[0] }[1, 2, 3]],
    ['Device', '1', $MdmTest::TOPIC], 'type, enabled, topic';
my %show = @{ $redis->fcall('mdm_enrollment', 0, 'DEV1') };
like $show{raw_authenticate}, qr/^\(\d+ bytes\)$/, 'raw messages hidden in show';
is $show{queue_length}, 0, 'queue length';

# --- one URL for both (mdm_endpoint) ------------------------------------------
enqueue(cmd('U-1', 'ProfileList'), 5, 0, 1, 'DEV1');
$r = $t->put('/mdm', $t->token_update('DEV1'), cert => 'dev1',
             ct => 'application/x-apple-aspen-mdm-checkin');
is $r->{status}, 200, 'mdm_endpoint: check-in by Content-Type';
$r = $t->put('/mdm', MdmTest::plist(UDID => 'DEV1', Status => 'Idle'),
             cert => 'dev1', ct => 'application/x-apple-aspen-mdm; charset=UTF-8');
is uuid_of($r), 'U-1', 'mdm_endpoint: report by Content-Type';
report('DEV1', 'dev1', Status => 'Acknowledged', CommandUUID => 'U-1');

# --- events -------------------------------------------------------------------
my $ev = $redis->xrevrange('mdm:events', '+', '-', 'COUNT', 1);
my %f = @{ $ev->[0][1] };
is_deeply [@f{qw(type id status uuid)}], ['Report', 'DEV1', 'Acknowledged', 'U-1'],
    'report event with status and uuid';

# --- concurrent device and user channels -------------------------------------
my $mac = 'MAC-1';
my $user = "$mac:USER-1";
$t->enroll($mac, 'mac');
$t->put('/mdm/checkin', $t->token_update($mac, UserID => 'USER-1'), cert => 'mac');
enqueue(cmd("D-$_", 'ProfileList'), 5, 0, 1, $mac) for 1 .. 40;
enqueue(cmd("S-$_", 'ProfileList'), 5, 0, 1, $user) for 1 .. 40;
enqueue(cmd("B-$_", 'ProfileList'), 5, 0, 1, $mac, $user) for 1 .. 20;
my @kids;
for my $ch ([device => []], [user => [UserID => 'USER-1']]) {
    my $pid = fork // die;
    if (!$pid) {
        my @ids;
        my $r = report($mac, 'mac', @{ $ch->[1] }, Status => 'Idle');
        for (1 .. 200) {
            last unless length $r->{body};
            push @ids, uuid_of($r);
            $r = report($mac, 'mac', @{ $ch->[1] }, Status => 'Acknowledged',
                        CommandUUID => $ids[-1]);
        }
        $t->spew("got.$ch->[0]", join "\n", @ids);
        POSIX::_exit(0);
    }
    push @kids, $pid;
}
waitpid $_, 0 for @kids;
my @dev = split /\n/, $t->slurp('got.device');
my @usr = split /\n/, $t->slurp('got.user');
is_deeply [sort @dev], [sort((map { "D-$_" } 1 .. 40), map { "B-$_" } 1 .. 20)],
    'device channel got each of its items exactly once';
is_deeply [sort @usr], [sort((map { "S-$_" } 1 .. 40), map { "B-$_" } 1 .. 20)],
    'user channel got each of its items exactly once';
ok !$redis->exists("mdm:cmd:B-$_"), "shared body B-$_ released" for 1, 20;

# --- re-Authenticate clears device and user queues ------------------------------
enqueue(cmd('R-1', 'ProfileList'), 5, 0, 1, $mac, $user);
$r = $t->put('/mdm/checkin', $t->authenticate($mac), cert => 'mac');
is $r->{status}, 200, 're-Authenticate';
is $redis->zcard("mdm:{$mac}:q:$mac") + $redis->zcard("mdm:{$mac}:q:$user"), 0,
    'queues cleared';
is { @{ $redis->fcall('mdm_result', 0, $user, 'R-1') } }->{status}, 'Cleared',
    'cleared result';
is $redis->hget("mdm:{$mac}:enr:$user", 'enabled'), '0', 'user channel disabled';
ok !$redis->exists('mdm:cmd:R-1'), 'body released';

# --- bulk enqueue to 10,000 ids -------------------------------------------------
my @bulk = map { sprintf 'BULK-%05d', $_ } 1 .. 10000;
$redis->hset("mdm:{$_}:enr:$_", 'type', 'Device', 'enabled', '1', sub {}) for @bulk;
$redis->wait_all_responses;
$res = enqueue(cmd('BULK-CMD', 'DeviceInformation', Queries => ['OSVersion']),
               5, 0, 0, @bulk);
is_deeply $res, ['BULK-CMD', 10000, 10000, 0], 'bulk enqueue to 10,000 ids';
is $redis->hget('mdm:cmd:BULK-CMD', 'refs'), 10000, 'one body, 10,000 refs';
is $redis->hlen('mdm:cmdt:BULK-CMD'), 10000, 'targets recorded';
is $redis->zcard('mdm:{BULK-07777}:q:BULK-07777'), 1, 'queued on a target';

# --- admin bad input: refused, nothing changed --------------------------------
my $state = $t->redis_state;
my @bad = (
    [[cmd('X-1', 'ProfileList'), 5, 0, 0, 'NOPE'], qr/unknown enrollment id NOPE/],
    [[MdmTest::plist(Command => { dict => [RequestType => 'ProfileList'] }),
      5, 0, 0, 'DEV1'], qr/no CommandUUID/],
    [[MdmTest::plist(CommandUUID => 'X-2'), 5, 0, 0, 'DEV1'],
     qr/no Command.RequestType/],
    [['not a plist', 5, 0, 0, 'DEV1'], qr/not an XML property list/],
    [[cmd('BULK-CMD', 'ProfileList'), 5, 0, 0, 'DEV1'],
     qr/already queued with another body/],
    [[cmd('X-3', 'ProfileList'), 12, 0, 0, 'DEV1'], qr/priority/],
    [[cmd('X-4', 'ProfileList'), 5, 0, 0, 'DEV1', 'DEV1'], qr/given twice/],
);
for my $b (@bad) {
    my ($args, $re) = @$b;
    eval { enqueue(@$args) };
    like $@, $re, "enqueue refused: $re";
}
$t->state_unchanged($state, 'refused enqueues changed nothing');

# chunks of one command: a second call with the same body skips the ids
# that hold it, so an interrupted bulk enqueue is completed by running it
# again; a target that finished it may not get it again
$res = enqueue(cmd('BULK-CMD', 'DeviceInformation', Queries => ['OSVersion']),
               5, 0, 0, @bulk[0 .. 99]);
is_deeply $res, ['BULK-CMD', 0, 0, 100], 'same chunk again: all already queued';
$t->state_unchanged($state, 'a repeated chunk writes nothing');
is $redis->hget('mdm:cmd:BULK-CMD', 'refs'), 10000, 'refs unchanged';
$redis->hset('mdm:cmdt:BULK-CMD', 'BULK-00002', 'Acknowledged');
eval { enqueue(cmd('BULK-CMD', 'DeviceInformation', Queries => ['OSVersion']),
               5, 0, 0, 'BULK-00002') };
like $@, qr/already queued for BULK-00002 \(Acknowledged\)/,
    'a finished target is refused';
$redis->del(map { ("mdm:{$_}:enr:$_", "mdm:{$_}:q:$_") } @bulk);
$redis->del('mdm:cmd:BULK-CMD', 'mdm:cmdt:BULK-CMD');

# --- the queued CommandUUID is the top-level one (decoys elsewhere) -----------
# The device reads the top-level dict; a CommandUUID or RequestType in a
# comment, a PI or a nested dict must not be what gets queued, or the
# device acknowledges another UUID and the command is sent forever.
my $H = qq{<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n};
my $decoy = $H . <<'EOF' . "</plist>\n";
<!-- <key>CommandUUID</key><string>DECOY-COMMENT</string>
     <key>RequestType</key><string>EraseDevice</string> -->
<dict>
  <key>Command</key>
  <dict>
    <key>Settings</key>
    <array><dict>
      <key>CommandUUID</key><string>DECOY-NESTED</string>
      <key>RequestType</key><string>EraseDevice</string>
    </dict></array>
    <!-- <key>RequestType</key><string>DeviceLock</string> -->
    <key>RequestType</key>
    <string><![CDATA[Device]]>Information</string>
    <key>Queries</key><array><string>OSVersion</string></array>
  </dict>
  <?note <key>CommandUUID</key><string>DECOY-PI</string> ?>
  <key>CommandUUID</key>
  <string>TOP-&#76;EVEL</string>
</dict>
EOF
$res = enqueue($decoy, 5, 0, 1, 'DEV2');
is_deeply $res, ['TOP-LEVEL', 1, 0, 0],
    'decoys in a comment, a PI and a nested dict: the top-level CommandUUID queued';
is $redis->hget('mdm:cmd:TOP-LEVEL', 'request_type'), 'DeviceInformation',
    'RequestType from the Command dict (CDATA read as text)';
ok !$redis->exists("mdm:cmd:$_"), "$_ not queued"
    for qw(DECOY-COMMENT DECOY-NESTED DECOY-PI);
$r = report('DEV2', 'dev2', Status => 'Idle');
is $r->{status}, 200, 'decoy command delivered';
is $r->{body}, $decoy, 'body sent as queued';
$r = report('DEV2', 'dev2', Status => 'Acknowledged', CommandUUID => 'TOP-LEVEL');
is $r->{status}, 200, 'device acknowledges the top-level UUID';
is $r->{body}, '', 'nothing more queued: the command is not sent again';
is +{ @{ $redis->fcall('mdm_result', 0, 'DEV2', 'TOP-LEVEL') } }->{status},
    'Acknowledged', 'queue item finished';

# ambiguous or malformed: refused, nothing changed
my $body = sub { $H . "<dict>$_[0]</dict></plist>\n" };
my $cmdd = '<key>Command</key><dict><key>RequestType</key><string>A</string></dict>';
$state = $t->redis_state;
for my $b (
    [$body->("$cmdd<key>CommandUUID</key><string>D-1</string>"
             . "<key>CommandUUID</key><string>D-2</string>"), qr/CommandUUID given twice/],
    [$body->('<key>Command</key><dict><key>RequestType</key><string>A</string>'
             . '<key>RequestType</key><string>B</string></dict>'
             . '<key>CommandUUID</key><string>D-3</string>'), qr/RequestType given twice/],
    [$body->("$cmdd<!-- <key>CommandUUID</key><string>D-4</string> -->"),
     qr/no CommandUUID/],
    [$body->('<key>Command</key><dict><key>X</key><dict><key>RequestType</key>'
             . '<string>A</string></dict></dict><key>CommandUUID</key><string>D-5</string>'),
     qr/no Command.RequestType/],
    [$body->("$cmdd<key>CommandUUID</key><string>D-6</string><!-- </dict>"),
     qr/unterminated comment/],
    [$body->("$cmdd<key>CommandUUID</key><string>D-7</string></array>"),
     qr{</array> closes <dict>}],
    [$body->("$cmdd<key>CommandUUID</key><string> D-8 </string>"),
     qr/invalid characters/],
    [$body->("$cmdd<key>CommandUUID</key><string>D-9</string>junk"),
     qr/text outside a string/],
    [$body->("$cmdd<key>CommandUUID</key><string>D-10&bogus;</string>"),
     qr/bad entity/],
    [$H . "<dict>$cmdd<key>CommandUUID</key><string>D-11</string></dict></plist><dict/>",
     qr/markup after/],
    [$body->("$cmdd<key>CommandUUID</key><string>D-12</string><key>N</key>"
             . ('<array>' x 70) . ('</array>' x 70)), qr/deeper than 64/],
    [$body->("$cmdd<key>CommandUUID</key><string>D-13</string><key>N</key><array>"
             . ('<dict/>' x 60000) . '</array>'), qr/more than 50000 elements/],
    [$body->("$cmdd<key>CommandUUID</key><string>D-14</string><key>N</key><array>"
             . ('<!---->' x 60000) . '</array>'), qr/more than 50000 elements/],
) {
    my ($b, $re) = @$b;
    eval { enqueue($b, 5, 0, 1, 'DEV2') };
    like $@, $re, "enqueue refused: $re";
}
$t->state_unchanged($state, 'refused plists changed nothing');

# enqueue cost: 1 MB bodies of several shapes, the Lua parse included
{
    my $tail = '</array></dict><key>CommandUUID</key><string>%s</string></dict></plist>';
    my $head = $H . '<dict><key>Command</key><dict><key>RequestType</key>'
        . '<string>Settings</string><key>Items</key><array>';
    my %shape = (
        data => '<data>' . ("QUJDRA==\n" x 116000) . '</data>',
        strings => join('', map { "<string>item $_ &amp; more</string>\n" } 1 .. 30000),
        dicts => join('', map { "<dict><key>k$_</key><integer>$_</integer>"
                                . "<key>b</key><true/></dict>\n" } 1 .. 16000),
        comments => join('', map { "<!-- c $_ --><string>s</string>\n" } 1 .. 30000),
        limit => '<dict/>' x 49000,
    );
    for my $name (sort keys %shape) {
        my ($best, $len) = (1e9, 0);
        for my $i (1 .. 3) {
            my $b = $head . $shape{$name} . sprintf($tail, "BIG-$name-$i");
            $len = length $b;
            my $t0 = Time::HiRes::time();
            my $res = enqueue($b, 5, 0, 1, 'DEV3');
            my $dt = Time::HiRes::time() - $t0;
            $best = $dt if $dt < $best;
            is $res->[0], "BIG-$name-$i", "$len-byte $name body queued" if $i == 1;
            $redis->fcall('mdm_cancel', 0, 'DEV3', "BIG-$name-$i");
        }
        diag sprintf "enqueue of a %d-byte body (%s): %.1f ms (best of 3)",
            $len, $name, $best * 1000;
        # generous for a shared machine; the figures are in the diag lines
        ok $best < 0.25, sprintf "%s body: enqueue in %.0f ms", $name, $best * 1000;
    }
}

# --- device bad input ------------------------------------------------------------
$t->enroll('OTHER', 'other');
$t->put('/mdm/checkin', $t->token_update('OTHER', UserID => 'OU'), cert => 'other');
my $big = MdmTest::plist(UDID => 'DEV1', Status => 'Acknowledged',
    CommandUUID => 'Z', Blob => { data => 'x' x 70000 });
my @rows = (
    ['report without Status', [UDID => 'DEV1'], 'dev1', 400, qr/Status missing/],
    ['unknown Status', [UDID => 'DEV1', Status => 'Done'], 'dev1', 400,
     qr/unknown Status/],
    ['Acknowledged without CommandUUID', [UDID => 'DEV1', Status => 'Acknowledged'],
     'dev1', 400, qr/CommandUUID missing/],
    ['report from an unbound certificate', [UDID => 'DEV1', Status => 'Idle'],
     'stranger', 403, qr/bound|not authenticated/],
    ['report for another device', [UDID => 'OTHER', Status => 'Idle'], 'dev1',
     403, qr/bound to another device \(DEV1\)/],
    ['user channel of a different device',
     [UDID => 'OTHER', UserID => 'OU', Status => 'Idle'], 'dev1', 403,
     qr/bound to another device/],
);
$t->device_cert('stranger');
for my $row (@rows) {
    my ($name, $kv, $cert, $status, $log) = @$row;
    my $st = $t->redis_state;
    my $n = $t->events_len;
    $t->mark_log;
    $r = report(undef, $cert, @$kv) if 0;
    $r = $t->put('/mdm/connect', MdmTest::plist(@$kv), cert => $cert);
    is $r->{status}, $status, "$name: $status";
    ok $t->wait_for_log($log, 2), "$name: logged" or diag $t->log_since_mark;
    $t->state_unchanged($st, "$name: Redis unchanged");
    is $t->events_len, $n, "$name: no event";
}
my $st = $t->redis_state;
$r = $t->put('/mdm/connect', $big, cert => 'dev1');
is $r->{status}, 413, 'oversized result: 413';
$t->state_unchanged($st, 'oversized: Redis unchanged');

$t->finish;
done_testing;
