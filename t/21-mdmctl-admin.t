#!/usr/bin/perl
# mdmctl admin commands against the real stack: commands built and checked
# against Apple's schema, queued through the mdm Functions, fetched and
# acknowledged by devices through nginx; queue/results/status/devices/show
# output as tables and JSON; bulk enqueue from stdin in chunks; bad input
# refused with one error line and nothing changed; the event stream.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use IO::Socket::INET;
use JSON::PP;
use MIME::Base64;
use POSIX ();
use Time::HiRes qw(sleep time);
use MdmTest;
use MdmctlTest qw(plist_file plist_string pval);

my $BIN = MdmTest::root() . '/mdmctl/mdmctl';
plan skip_all => "build mdmctl first ($BIN)" unless -x $BIN;

my $t = MdmTest->new;
$t->start_nginx($t->conf);
my $redis = $t->redis;
my $dir = $t->dir;
$ENV{MDM_REDIS} = 'unix:' . $t->redis_sock;

my $H = '[0-9A-F]';
my $UUID_RE = qr/^$H{8}-$H{4}-4$H{3}-[89AB]$H{3}-$H{12}$/;

sub ctl { $t->mdmctl(@_) }

sub json_of {
    my ($r) = @_;
    my $v = eval { decode_json($r->{out}) };
    diag "not JSON: $r->{out}$r->{err}" unless defined $v;
    return $v;
}

sub report {
    my ($udid, @kv) = @_;
    return $t->put('/mdm/connect', MdmTest::plist(UDID => $udid, @kv),
                   cert => lc $udid);
}

sub body_cmd {
    my ($r) = @_;
    return undef unless length($r->{body} // '');
    my $p = eval { plist_string($r->{body}) };
    diag "not a plist: $@" unless $p;
    return $p;
}

# pv($plist, @path): the scalar value there, or undef
sub pv {
    my $n = pval(@_);
    return ref $n eq 'ARRAY' ? $n->[1] : undef;
}

# DEV1 sends an UnlockToken (for ClearPasscode); DEV2 and DEV3 do not.
my $unlock = "UNLOCK-TOKEN-\x00\x01\xfe-DEV1";
for my $m ($t->authenticate('DEV1'),
           $t->token_update('DEV1', UnlockToken => { data => $unlock })) {
    my $r = $t->put('/mdm/checkin', $m, cert => 'dev1');
    die "enroll DEV1: $r->{status}" unless $r->{status} == 200;
}
$t->enroll($_, lc $_) for qw(DEV2 DEV3);

# --- build, check, enqueue and deliver every daily command ----------------

my $profile = $t->spew('wifi.mobileconfig', MdmTest::plist(
    PayloadContent => [], PayloadDisplayName => 'Wi-Fi',
    PayloadIdentifier => 'com.example.wifi', PayloadType => 'Configuration',
    PayloadUUID => '6B0C3B63-7E43-4F0E-9C16-54B8D6C5A0F2',
    PayloadVersion => { int => 1 }));

# [RequestType, [arguments], { key => expected node } ]
my @daily = (
    ['DeviceInformation', ['Queries=SerialNumber,OSVersion,HostName'],
     { Queries => ['array', [map { ['string', $_] }
                             qw(SerialNumber OSVersion HostName)]] }],
    ['SecurityInfo', [], {}],
    ['ProfileList', ['ManagedOnly=true'], { ManagedOnly => ['boolean', 1] }],
    ['InstallProfile', ["Payload=\@$profile"],
     { Payload => ['data', $t->slurp($profile)] }],
    ['RemoveProfile', ['Identifier=com.example.wifi'],
     { Identifier => ['string', 'com.example.wifi'] }],
    ['CertificateList', ['ManagedOnly=false'],
     { ManagedOnly => ['boolean', 0] }],
    ['InstalledApplicationList',
     ['Identifiers=com.apple.Pages,com.example.app', 'ManagedAppsOnly=no'],
     { Identifiers => ['array', [['string', 'com.apple.Pages'],
                                 ['string', 'com.example.app']]],
       ManagedAppsOnly => ['boolean', 0] }],
    ['InstallApplication', ['iTunesStoreID=361309726', 'ManagementFlags=1',
                            'Options.PurchaseMethod=1',
                            'Configuration:={"server":"x","port":443}'],
     { iTunesStoreID => ['integer', 361309726],
       ManagementFlags => ['integer', 1] }],
    ['RemoveApplication', ['Identifier=com.example.app'],
     { Identifier => ['string', 'com.example.app'] }],
    ['DeviceLock', ['Message=Return to IT', 'PhoneNumber=+1 555 0100'],
     { Message => ['string', 'Return to IT'] }],
    ['EraseDevice', ['PIN=123456', 'ObliterationBehavior=Default'],
     { PIN => ['string', '123456'] }],
    ['RestartDevice', ['NotifyUser=true'], { NotifyUser => ['boolean', 1] }],
    ['ShutDownDevice', [], {}],
    ['Settings', ['Settings:=[{"Item":"DeviceName","DeviceName":"Lab 1"},'
                  . '{"Item":"Wallpaper","Image":"' . encode_base64('PNG', '')
                  . '","Where":3}]'], {}],
    ['DeviceConfigured', [], {}],
    ['ScheduleOSUpdate', ['Updates:=[{"InstallAction":"InstallASAP",'
                          . '"ProductVersion":"17.2"}]'], {}],
    ['AvailableOSUpdates', [], {}],
);

my (@expect, %file_of);
for my $d (@daily) {
    my ($rt, $args, $keys) = @$d;
    my $file = "$dir/$rt.plist";
    my $r = ctl('command', '--out', $file, $rt, @$args);
    is $r->{rc}, 0, "$rt: built" or diag $r->{err};
    my $p = eval { plist_file($file) };
    ok $p, "$rt: plistutil reads it" or diag $@;
    next unless $p;
    is pv($p, 'Command', 'RequestType'), $rt, "$rt: RequestType";
    like pv($p, 'CommandUUID'), $UUID_RE,
        "$rt: fresh upper-case UUID v4";
    for my $k (sort keys %$keys) {
        is_deeply pval($p, 'Command', $k), $keys->{$k}, "$rt: $k typed";
    }
    $r = ctl('enqueue', '--json', '--no-push', '--plist', $file, 'DEV1');
    is $r->{rc}, 0, "$rt: enqueued from --plist" or diag $r->{err};
    my $j = json_of($r) // {};
    is $j->{uuid}, pv($p, 'CommandUUID'), "$rt: the file's CommandUUID";
    is_deeply [@$j{qw(request_type targets pushes)}], [$rt, 1, 0],
        "$rt: one target, no push";
    push @expect, [$j->{uuid}, $rt];
    $file_of{$rt} = $file;
}

# Settings: the Wallpaper variant got data and an integer
{
    my $p = plist_file($file_of{Settings});
    is_deeply pval($p, 'Command', 'Settings', 1, 'Image'), ['data', 'PNG'],
        'Settings: JSON string typed as data by the schema';
    is_deeply pval($p, 'Command', 'Settings', 1, 'Where'), ['integer', 3],
        'Settings: Where is an integer';
}

# ClearPasscode: the UnlockToken comes from the enrollment
my $r = ctl('enqueue', '--json', 'ClearPasscode', 'DEV1');
is $r->{rc}, 0, 'ClearPasscode enqueued without an UnlockToken argument'
    or diag $r->{err};
my $cp = (json_of($r) // [{}])->[0];
is $cp->{id}, 'DEV1', 'ClearPasscode: per-device command';
like $cp->{uuid} // '', $UUID_RE, 'ClearPasscode: fresh UUID';
is $cp->{pushes}, 1, 'ClearPasscode: push requested';
push @expect, [$cp->{uuid}, 'ClearPasscode'];

# raw plists: unknown keys and RequestTypes warn, the command goes as is
$t->spew('raw1.plist', MdmTest::plist(CommandUUID => 'RAW-1',
    Command => { dict => [RequestType => 'ProfileList', FutureKey => 'x'] }));
$r = ctl('enqueue', '--no-push', '--plist', "$dir/raw1.plist", 'DEV1');
is $r->{rc}, 0, 'raw plist with a key not in the schema queued';
is $r->{err}, "mdmctl enqueue: warning: ProfileList: key FutureKey is not "
    . "in the schema\n",
    'one warning';
$t->spew('raw2.plist', MdmTest::plist(CommandUUID => 'RAW-2',
    Command => { dict => [RequestType => 'FutureCommand'] }));
$r = ctl('enqueue', '--no-push', '--plist', "$dir/raw2.plist", 'DEV1');
is $r->{rc}, 0, 'raw plist with an unknown RequestType queued';
like $r->{err},
    qr/RequestType FutureCommand is not in the schema; sent unchecked/,
    'unchecked warning';
push @expect, ['RAW-1', 'ProfileList'], ['RAW-2', 'FutureCommand'];

# the device fetches everything in order and acknowledges each
my @got;
$r = report('DEV1', Status => 'Idle');
for (1 .. @expect + 1) {
    my $c = body_cmd($r) or last;
    my $u = pv($c, 'CommandUUID');
    push @got, [$u, pv($c, 'Command', 'RequestType')];
    if ($got[-1][1] eq 'ClearPasscode') {
        is_deeply pval($c, 'Command', 'UnlockToken'), ['data', $unlock],
            'ClearPasscode carries the enrollment\'s unlock_token';
    }
    if ($got[-1][1] eq 'InstallProfile') {
        is_deeply pval($c, 'Command', 'Payload'),
            ['data', $t->slurp($profile)], 'InstallProfile payload intact';
    }
    $r = report('DEV1', Status => 'Acknowledged', CommandUUID => $u);
}
is_deeply \@got, \@expect, 'device received every command, in order';

my $acked = 0;
for my $e (@expect) {
    my $j = json_of(ctl('results', '--json', 'DEV1', $e->[0])) // {};
    $acked++ if ($j->{status} // '') eq 'Acknowledged'
                && ($j->{request_type} // '') eq $e->[1];
}
is $acked, scalar @expect, 'every result Acknowledged with its request type';

# --- queue, status, results, devices, show ---------------------------------

$r = ctl('enqueue', '--priority', 7, '--expires', 3600, 'ProfileList',
         'DEV2', 'DEV3');
is $r->{rc}, 0, 'enqueue to two devices';
like $r->{out}, qr/^\S+ ProfileList queued for 2 targets, 2 push requests\n$/,
    'enqueue table line';
my ($pl) = $r->{out} =~ /^(\S+)/;
like $pl, $UUID_RE, 'uuid first on the line';
is $redis->llen('mdm:push:q'), 3, 'push requests written';

$r = ctl('queue', 'DEV2');
is $r->{rc}, 0, 'queue';
like $r->{out},
    qr/^UUID\s+REQUEST_TYPE\s+STATUS\s+NOTNOW\s+AGE\s+PRIO\s+EXPIRES\n/,
    'queue header';
like $r->{out},
    qr/^\Q$pl\E\s+ProfileList\s+Queued\s+0\s+\d+s\s+7\s+(59m|60m|\d+s)\n/m,
    'queue row';
my $q = json_of(ctl('queue', '--json', 'DEV2')) // [];
is_deeply [map { @$_{qw(uuid request_type status notnow_count priority)} } @$q],
    [$pl, 'ProfileList', 'Queued', 0, 7], 'queue --json';
ok $q->[0]{expires_in_s} > 3000 && $q->[0]{expires_in_s} <= 3600,
    'queue --json expiry';

$r = report('DEV2', Status => 'Idle');
is pv(body_cmd($r), 'CommandUUID'), $pl, 'DEV2 fetched it';
my $ack = MdmTest::plist(UDID => 'DEV2', Status => 'Acknowledged',
                         CommandUUID => $pl, ProfileList => []);
$r = $t->put('/mdm/connect', $ack, cert => 'dev2');
is $r->{status}, 200, 'DEV2 acknowledged';

$r = ctl('status', $pl);
is $r->{rc}, 0, 'status';
is $r->{out}, "DEV2" . (' ' x 37) . "Acknowledged\nDEV3" . (' ' x 37)
    . "Queued\n2 targets: Acknowledged 1 Queued 1\n", 'status table';
my $st = json_of(ctl('status', '--json', $pl)) // {};
is_deeply $st->{counts}, { Acknowledged => 1, Queued => 1 },
    'status --json counts';
is_deeply $st->{statuses}, [{ id => 'DEV2', status => 'Acknowledged' },
                            { id => 'DEV3', status => 'Queued' }],
    'status --json per target';

$r = ctl('results', 'DEV2', $pl);
is $r->{rc}, 0, 'results';
like $r->{out}, qr/^request_type\s+ProfileList$/m, 'results: request type';
like $r->{out}, qr/^status\s+Acknowledged$/m, 'results: status';
like $r->{out}, qr/^ms\s+\d{13} \(\d{4}-\d\d-\d\dT[\d:]+Z\)$/m,
    'results: time';
like $r->{out}, qr/^raw:\n\Q$ack\E/m, 'results: raw report last';
is ctl('results', '--raw', 'DEV2', $pl)->{out}, $ack, 'results --raw';
my $res = json_of(ctl('results', '--json', 'DEV2', $pl)) // {};
is $res->{raw}, $ack, 'results --json raw';
is +(json_of(ctl('results', '--json', 'DEV3', $pl)) // {})->{status}, 'Queued',
    'results while queued';

$r = ctl('devices');
is $r->{rc}, 0, 'devices';
my @rows = split /\n/, $r->{out};
like $rows[0], qr/^ID\s+TYPE\s+ENABLED\s+LAST_SEEN\s+QUEUE\s+TOPIC$/,
    'devices header';
is scalar @rows, 4, 'three devices';
like $r->{out},
    qr/^DEV3\s+Device\s+yes\s+\d{4}-\d\d-\d\dT\S+Z\s+1 \Q$MdmTest::TOPIC\E$/m,
    'devices row';
my $dv = json_of(ctl('devices', '--json')) // [];
is_deeply [sort map { $_->{id} } @$dv], [qw(DEV1 DEV2 DEV3)],
    'devices --json ids';
is_deeply [map { $_->{enabled} ? 1 : 0 } @$dv], [1, 1, 1],
    'devices --json enabled';
is scalar @{ json_of(ctl('devices', '--json', '--limit', 2)) // [] }, 2,
    'devices --limit';
is scalar @{ json_of(ctl('devices', '--json', '--offset', 2)) // [] }, 1,
    'devices --offset';

$r = ctl('show', 'DEV1');
is $r->{rc}, 0, 'show';
like $r->{out}, qr/^id\s+DEV1$/m, 'show: id';
like $r->{out}, qr/^serial\s+SNDEV1$/m, 'show: serial';
like $r->{out}, qr/^unlock_token\s+\(\d+ bytes\)$/m, 'show: secrets by length';
like $r->{out}, qr/^last_seen_ms\s+\d+ \(\d{4}-\d\d-\d\dT/m,
    'show: readable times';
my $sh = json_of(ctl('show', '--json', 'DEV1')) // {};
is $sh->{type}, 'Device', 'show --json type';
is $sh->{enabled}, '1', 'show --json enabled';

# an Error report: the ErrorChain is summarised above the raw report
$r = ctl('enqueue', '--json', '--no-push', 'RemoveProfile',
         'Identifier=com.example.none', 'DEV2');
my $rp = (json_of($r) // {})->{uuid} // '';
report('DEV2', Status => 'Idle');
$r = report('DEV2', Status => 'Error', CommandUUID => $rp,
    ErrorChain => [{ dict => [ErrorCode => { int => 4001 },
        ErrorDomain => 'MCProfileErrorDomain',
        LocalizedDescription => 'The profile is not installed.'] }]);
$r = ctl('results', 'DEV2', $rp);
like $r->{out}, qr/^status\s+Error$/m, 'Error result';
like $r->{out},
    qr/^error\s+MCProfileErrorDomain 4001: The profile is not installed\.$/m,
    'ErrorChain summary';

# a user channel id (UDID:UserID) is an id like any other
$t->put('/mdm/checkin', $t->token_update('DEV3', UserID => 'U3'),
        cert => 'dev3');
$r = ctl('enqueue', '--json', '--no-push', 'ProfileList', 'DEV3:U3');
my $uu = (json_of($r) // {})->{uuid} // '';
is_deeply [map { $_->{uuid} } @{ json_of(ctl('queue', '--json', 'DEV3:U3'))
                                 // [] }], [$uu], 'user channel queue';
$r = report('DEV3', UserID => 'U3', Status => 'Idle');
is pv(body_cmd($r), 'CommandUUID'), $uu,
    'user channel fetched its command';
report('DEV3', UserID => 'U3', Status => 'Acknowledged', CommandUUID => $uu);
is +(json_of(ctl('results', '--json', 'DEV3:U3', $uu)) // {})->{status},
    'Acknowledged', 'user channel result';
like ctl('show', 'DEV3')->{out}, qr/^users\s+DEV3:U3$/m, 'show: user channels';

# --- cancel, clear, push ---------------------------------------------------

$r = ctl('cancel', 'DEV3', $pl);
is $r->{rc}, 0, 'cancel';
is $r->{out}, "$pl canceled for DEV3\n", 'cancel output';
is +(json_of(ctl('results', '--json', 'DEV3', $pl)) // {})->{status},
    'Canceled',
    'canceled result';
$r = ctl('cancel', 'DEV3', $pl);
is $r->{rc}, 1, 'cancel again fails';
is $r->{err}, "mdmctl cancel: $pl is not queued for DEV3\n",
    'cancel error line';

ctl('enqueue', '--no-push', 'SecurityInfo', 'DEV3') for 1 .. 2;
$r = ctl('clear', 'DEV3', 'DEV2');
is $r->{rc}, 0, 'clear';
is $r->{out}, "DEV3: 2 commands removed\nDEV2: 0 commands removed\n",
    'clear output';
is_deeply json_of(ctl('queue', '--json', 'DEV3')), [], 'queue empty';

$redis->del('mdm:push:q', 'mdm:push:pending');
$r = ctl('push', '--json', 'DEV1', 'DEV2');
is_deeply json_of($r), { ids => 2, pushes => 2 }, 'push --json';
$r = ctl('push', 'DEV1');
is $r->{out}, "0 push requests for 1 id\n", 'push coalesced';

# --- unbind, conf ------------------------------------------------------------

my $sha2 = $t->device_cert('dev2')->{sha256};
$r = ctl('unbind', 'DEV2');
is $r->{rc}, 0, 'unbind';
is $r->{out}, "DEV2: certificate $sha2 unbound\n", 'unbind output';
ok !$redis->hexists('mdm:{DEV2}:enr:DEV2', 'cert'), 'binding gone';
ok !$redis->exists("mdm:cert:$sha2"), 'owner key gone';
is +{ @{ $redis->xrevrange('mdm:audit', '+', '-', 'COUNT', 1)->[0][1] } }->{type},
    'Unbind', 'Unbind event (mdm:audit)';
is_deeply json_of(ctl('unbind', '--json', 'DEV2')), { id => 'DEV2', cert => undef },
    'unbind --json, nothing bound';
$r = ctl('unbind', 'NOPE');
is_deeply [$r->{rc}, $r->{err}], [1, "mdmctl unbind: unknown enrollment id NOPE\n"],
    'unbind of an unknown id: one line, exit 1';
is $t->put('/mdm/checkin', $t->authenticate('DEV2'), cert => 'dev2')->{status}, 200,
    'the device Authenticates again';
is $t->put('/mdm/checkin', $t->token_update('DEV2'), cert => 'dev2')->{status}, 200,
    'and is enrolled';

$r = ctl('conf', 'get');
is $r->{rc}, 0, 'conf get';
is $r->{out}, <<'EOF', 'conf get: every setting, value, hash, default';
allow_rebind     0          mdm:policy (default)
migration        0          mdm:policy (default)
result_ttl       604800     mdm:conf (default)
events_maxlen    100000     mdm:conf (default)
cert_warn_days   30         mdm:conf (default)
audit_maxlen     1000000    mdm:conf (default)
command_max_age  2592000    mdm:conf (default)
EOF
$r = ctl('conf', 'set', 'allow_rebind', '1');
is $r->{out}, "allow_rebind     1          mdm:policy\n", 'conf set allow_rebind';
is $redis->hget('mdm:policy', 'allow_rebind'), '1', 'in mdm:policy';
ctl('conf', 'set', 'cert_warn_days', '14');
is $redis->hget('mdm:conf', 'cert_warn_days'), '14', 'cert_warn_days in mdm:conf';
is_deeply json_of(ctl('conf', '--json', 'get', 'allow_rebind')),
    { allow_rebind => { value => '1', hash => 'mdm:policy', set => JSON::PP::true } },
    'conf get --json';
my $cstate = $t->redis_state;
for my $bad ([['set', 'allow_rebind', 'yes'], 'allow_rebind must be 1 or 0'],
             [['set', 'result_ttl', '5'], 'result_ttl must be an integer 60-31536000'],
             [['set', 'events_maxlen', '1e6'], 'events_maxlen must be an integer'],
             [['set', 'bogus', '1'], 'unknown setting bogus'],
             [['get', 'bogus'], 'unknown setting bogus'],
             [['set', 'migration'], 'give get'],
             [['frob'], 'give get']) {
    my ($args, $msg) = @$bad;
    $r = ctl('conf', @$args);
    ok $r->{rc} != 0 && $r->{err} =~ /^mdmctl conf: \Q$msg\E/ && $r->{err} =~ tr/\n// == 1,
        "conf @$args refused: $msg" or diag explain $r;
}
$t->state_unchanged($cstate, 'refused conf changes changed nothing');
ctl('conf', 'set', 'allow_rebind', '0');
ctl('conf', 'set', 'cert_warn_days', '30');

# --- bad input: one error line, non-zero exit, nothing changed --------------

$t->spew('bad-type.plist', MdmTest::plist(CommandUUID => 'BAD-1',
    Command => { dict => [RequestType => 'InstallProfile', Payload => 'x'] }));
$t->spew('no-rt.plist', MdmTest::plist(CommandUUID => 'BAD-2',
    Command => { dict => [Payload => 'x'] }));
$r = ctl('enqueue', '--no-push', '--uuid', 'DUP-1', 'ProfileList', 'DEV2');
is $r->{rc}, 0, 'DUP-1 queued for DEV2';
# running an enqueue again completes it: ids that hold it are skipped
$r = ctl('enqueue', '--no-push', '--uuid', 'DUP-1', 'ProfileList', 'DEV3',
         'DEV2');
is $r->{out}, "DUP-1 ProfileList queued for 1 target, 0 push requests "
    . "(1 already held it)\n", 'enqueue again: only the new id queued';
is $redis->hget('mdm:cmd:DUP-1', 'refs'), 2, 'DUP-1: two targets';

my @bad = (
    [['enqueue', 'Bogus', 'DEV1'],
     qr/^mdmctl enqueue: unknown RequestType Bogus \(/],
    [['enqueue', 'RemoveApplication', 'DEV1'],
     qr/^mdmctl enqueue: RemoveApplication: missing required key Identifier$/],
    [['enqueue', 'EraseDevice', 'ReturnToService.WiFiProfileData=AAAA', 'DEV1'],
     qr/missing required key ReturnToService\.Enabled$/],
    [['enqueue', 'ProfileList', 'ManagedOnly=maybe', 'DEV1'],
     qr/ManagedOnly must be a boolean/],
    [['enqueue', 'InstallApplication', 'iTunesStoreID=abc', 'DEV1'],
     qr/iTunesStoreID must be an integer/],
    [['enqueue', 'InstallProfile', 'Payload=not*base64', 'DEV1'],
     qr/Payload: not base64/],
    [['enqueue', 'InstallProfile', 'Payload=@/nonexistent/x', 'DEV1'],
     qr/nonexistent/],
    [['enqueue', '--plist', "$dir/bad-type.plist", 'DEV1'],
     qr/InstallProfile: Payload must be data, not a string$/],
    [['enqueue', '--plist', "$dir/no-rt.plist", 'DEV1'],
     qr/no Command dictionary with a RequestType/],
    [['enqueue', 'DeviceLock', 'Mesage=hi', 'DEV1'],
     qr/DeviceLock: unknown key Mesage/],
    [['enqueue', 'DeviceInformation', 'Queries=Nope', 'DEV1'],
     qr/Queries\[0\]: "Nope" is not a known value/],
    [['enqueue', 'EraseDevice', 'ObliterationBehavior=Never', 'DEV1'],
     qr/"Never" is not one of Default\|DoNotObliterate/],
    [['enqueue', 'Settings', 'Settings:=[{"Item":"Nope"}]', 'DEV1'],
     qr/Settings\[0\]: unknown Item "Nope"/],
    [['enqueue', 'Settings', 'Settings:=[{"Item":"TimeZone"}]', 'DEV1'],
     qr/missing required key Settings\[0\]\.TimeZone$/],
    [['enqueue', 'Settings', 'Settings:=[', 'DEV1'], qr/Settings: bad JSON/],
    [['enqueue', 'Settings', 'Settings=x', 'DEV1'],
     qr/give it as Settings:=JSON/],
    [['enqueue', 'ProfileList', 'NOSUCH'],
     qr/^mdmctl enqueue: unknown enrollment id NOSUCH$/],
    [['enqueue', 'ProfileList', 'DEV1', 'NOSUCH'],
     qr/^mdmctl enqueue: unknown enrollment id NOSUCH$/],
    [['enqueue', 'ProfileList', 'DEV1', 'DEV1'], qr/id DEV1 given twice/],
    [['enqueue', '--uuid', 'DUP-1', 'SecurityInfo', 'DEV3'],
     qr/CommandUUID DUP-1 is already queued with another body/],
    [['enqueue', '--uuid', 'bad uuid!', 'ProfileList', 'DEV1'],
     qr/CommandUUID "bad uuid!"/],
    [['enqueue', 'ClearPasscode', 'DEV1', 'DEV2'],
     qr/^mdmctl enqueue: DEV2 has no unlock_token/],
    [['enqueue', '--priority', 10, 'ProfileList', 'DEV1'], qr/--priority/],
    [['enqueue', 'ProfileList'], qr/no enrollment ids/],
    [['enqueue', '--bogus', 'ProfileList', 'DEV1'], qr/unknown option --bogus/],
    [['enqueue', '--redis', 'unix:/nonexistent.sock', 'ProfileList', 'DEV1'],
     qr/^mdmctl enqueue: redis unix:\/nonexistent\.sock: /],
    [['queue', '--redis', 'localhost:6379', 'DEV1'],
     qr/^mdmctl queue: --redis: "localhost:6379" needs an IP address/],
    [['queue', '--redis', '127.0.0.1:6379 timeout=3', 'DEV1'],
     qr/"timeout=3" is not username=, password=, db=, master=/],
    [['push', 'DEV1', 'NOSUCH'],
     qr/^mdmctl push: unknown enrollment id NOSUCH$/],
    [['queue'], qr/give one enrollment id/],
    [['cancel', 'DEV1'], qr/give an enrollment id and a CommandUUID/],
    [['results', 'DEV1', 'NOPE'],
     qr/^mdmctl results: no result for NOPE on DEV1$/],
    [['status', 'NOPE'], qr/^mdmctl status: unknown CommandUUID NOPE/],
    [['show', 'NOSUCH'], qr/^mdmctl show: unknown enrollment id NOSUCH$/],
    [['clear', 'DEV1', 'DEV1'], qr/given twice/],
    [['events', '--count', 'x'], qr/--count/],
    [['command', 'Bogus'], qr/^mdmctl command: unknown RequestType Bogus/],
    [['command', '--keys', 'Bogus'], qr/unknown RequestType Bogus/],
);

my $before = $t->redis_state;
my $events = $t->events_len;
for my $b (@bad) {
    my ($args, $re) = @$b;
    my $name = join ' ', map { ref $_ ? 'stdin' : $_ } @$args;
    $name = substr($name, 0, 70);
    $r = ctl(@$args);
    ok $r->{rc} != 0 && !$r->{sig}, "$name: non-zero exit ($r->{rc})";
    like $r->{err}, $re, "$name: error text";
    is scalar(() = $r->{err} =~ /\n/g), 1, "$name: one line"
        or diag $r->{err};
    is $r->{out}, '', "$name: nothing on stdout";
}
$t->state_unchanged($before, 'bad input changed nothing');
is $t->events_len, $events, 'no events from bad input';

# --- bulk: 20,000 ids from stdin, in chunks ----------------------------------

my @bulk = map { sprintf 'BULK%05d', $_ } 1 .. 20000;
my $cmds = join '',
    map { "HSET mdm:{$_}:enr:$_ type Device enabled 1\n" } @bulk;
$t->spew('bulk.redis', $cmds);
system("redis-cli -s " . $t->redis_sock . " < $dir/bulk.redis > /dev/null");
is $redis->exists("mdm:{BULK20000}:enr:BULK20000"), 1, 'bulk enrollments';

my $xlen = $t->events_len;
$r = ctl({ stdin => join("\n", '# fleet', @bulk, '') }, 'enqueue', '--json',
         '--no-push', 'DeviceInformation', 'Queries=OSVersion', '-');
is $r->{rc}, 0, 'bulk enqueue from stdin' or diag $r->{err};
my $bj = json_of($r) // {};
is $bj->{targets}, 20000, 'bulk: 20,000 targets';
my @enq = grep { $_->[1]{uuid} && $_->[1]{uuid} eq ($bj->{uuid} // '') }
          map { [$_->[0], { @{ $_->[1] } }] }
          @{ $redis->xrange('mdm:audit', '-', '+') };
is_deeply [map { $_->[1]{targets} } @enq], [(2000) x 10],
    'bulk: ten FCALLs of 2,000 with one CommandUUID';

$r = ctl('status', '--summary', $bj->{uuid});
is $r->{out}, "20000 targets: Queued 20000\n", 'bulk: status summary';
$st = json_of(ctl('status', '--json', $bj->{uuid})) // {};
is $st->{targets}, 20000, 'bulk: status --json targets';
is_deeply $st->{counts}, { Queued => 20000 }, 'bulk: status --json counts';
is scalar @{ $st->{statuses} // [] }, 20000, 'bulk: status --json lists each';

$r = ctl({ stdin => join("\n", @bulk[0 .. 99], '') }, 'enqueue', '--json',
         '--no-push', '--chunk', 30, 'SecurityInfo', '-');
is +(json_of($r) // {})->{targets}, 100, 'bulk: --chunk 30';
my @ev = @{ $redis->xrevrange('mdm:audit', '+', '-', 'COUNT', 4) };
is_deeply [reverse map { { @{ $_->[1] } }->{targets} } @ev], [30, 30, 30, 10],
    'bulk: four chunks';

# one unknown id at the very end: refused before the first chunk
my $keys = $redis->dbsize;
$xlen = $t->events_len;
$r = ctl({ stdin => join("\n", @bulk, 'NOSUCH', '') }, 'enqueue', '--no-push',
         'ProfileList', '-');
is $r->{rc}, 1, 'bulk with an unknown id refused';
is $r->{err}, "mdmctl enqueue: unknown enrollment id NOSUCH\n",
    'bulk: one error line';
is_deeply [$redis->dbsize, $t->events_len,
           $redis->zcard('mdm:{BULK00001}:q:BULK00001')],
    [$keys, $xlen, 2], 'bulk: nothing queued, no event';

# --- events ------------------------------------------------------------------

$r = ctl('events', '--from', '0', '--count', 3, '--json');
is $r->{rc}, 0, 'events --count';
my @lines = split /\n/, $r->{out};
is scalar @lines, 3, 'three events, one JSON object per line';
my @evj = map { eval { decode_json($_) } // {} } @lines;
is_deeply [map { $_->{type} } @evj],
    [qw(Authenticate TokenUpdate Authenticate)],
    'oldest events first';
is $evj[0]{id}, 'DEV1', 'event fields';
like $evj[0]{stream_id}, qr/^\d+-\d+$/, 'stream id';

$r = ctl('events', '--from', $evj[0]{stream_id}, '--count', 1);
like $r->{out}, qr/^\d{4}-\d\d-\d\dT\S+Z \d+-\d+ TokenUpdate id=DEV1\n$/,
    'events table line';

# follow: start reading, then produce two events
my $out = "$dir/follow.out";
my $pid = fork // die;
if (!$pid) {
    open STDOUT, '>', $out or die;
    open STDERR, '>', "$out.err" or die;
    exec $BIN, 'events', '--audit', '--json', '--count', 2
        or POSIX::_exit(127);
}
my $waiting = 0;
for (1 .. 200) {
    $waiting = grep { /cmd=xread/ } split /\n/, $t->rcli_raw('CLIENT', 'LIST');
    last if $waiting;
    sleep 0.05;
}
ok $waiting, 'events follower is blocked in XREAD';
my @fu = map { (json_of(ctl('enqueue', '--json', '--no-push', 'SecurityInfo',
                            'DEV1')) // {})->{uuid} } 1 .. 2;
my $exited = 0;
for (1 .. 400) {
    if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
        $exited = 1;
        last;
    }
    sleep 0.05;
}
if (!$exited) {
    kill 'TERM', $pid;
    waitpid $pid, 0;
}
ok $exited && $? == 0, 'follower stopped after --count 2';
my @fj = map { eval { decode_json($_) } // {} } split /\n/, $t->slurp($out);
is_deeply [map { "$_->{type} $_->{uuid}" } @fj], [map { "Enqueue $_" } @fu],
    'follower saw both enqueues';

$r = ctl('events', '--timeout', 0);
is_deeply [$r->{rc}, $r->{out}], [0, ''], 'events --timeout 0: nothing new';

# --- TCP, password, database ------------------------------------------------

my $port = $t->port('redis_tcp');
my $rpid = fork // die;
if (!$rpid) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', $port, '--bind', '127.0.0.1', '--save', '',
         '--requirepass', 'sEcret', '--dir', $dir, '--logfile',
         "$dir/redis-tcp.log" or POSIX::_exit(127);
}
my $up = 0;
for (1 .. 200) {
    $up = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") and last;
    sleep 0.05;
}
ok $up, 'password-protected redis on TCP';
my $tcli = "redis-cli -p $port -a sEcret --no-auth-warning -n 3";
my $lib = MdmTest::root() . '/redis-scripts/mdm.lua';
qx{$tcli -x FUNCTION LOAD REPLACE < $lib};
qx{$tcli HSET 'mdm:{TCP1}:enr:TCP1' type Device enabled 1};
qx{$tcli ZADD mdm:enrollments 1 TCP1};
$ENV{MDM_PW} = 'sEcret';
$r = ctl('devices', '--json', '--redis', "127.0.0.1:$port", '--password',
         'env:MDM_PW', '--db', 3);
is_deeply [map { $_->{id} } @{ json_of($r) // [] }], ['TCP1'],
    'host:port, --password env:VAR, --db';
{
    local $ENV{MDM_REDIS} = "127.0.0.1:$port";
    local $ENV{MDM_REDIS_PASSWORD} = 'pass:wrong';
    $r = ctl('devices');
}
is $r->{rc}, 1, 'wrong password refused';
like $r->{err}, qr/^mdmctl devices: .*(WRONGPASS|invalid)/i, 'Redis error text';
is scalar(() = $r->{err} =~ /\n/g), 1, 'one line';
qx{$tcli ACL SETUSER mdm-adm on '>pw2' '~*' '&*' +\@all};
$r = ctl('devices', '--json', '--redis',
         "127.0.0.1:$port username=mdm-adm password=pw2 db=3");
is_deeply [map { $_->{id} } @{ json_of($r) // [] }], ['TCP1'],
    'one spec: address, username=, password=, db=';
$r = ctl('devices', '--redis', "127.0.0.1:$port username=mdm-adm db=3",
         '--password', 'pass:sEcret');
is $r->{rc}, 1, "username= with another user's password refused";
$r = ctl('devices', '--json', '--redis', "127.0.0.1:$port db=3", '--user',
         'mdm-adm', '--password', 'pass:pw2');
is_deeply [map { $_->{id} } @{ json_of($r) // [] }], ['TCP1'], '--user';
$r = ctl('devices', '--redis', "127.0.0.1:$port db=3", '--user', 'mdm-adm');
is_deeply [$r->{rc}, $r->{err}], [1, "mdmctl devices: Redis user mdm-adm: give "
    . "its password (--password, password= or \$MDM_REDIS_PASSWORD)\n"],
    '--user without a password: one line';
kill 'TERM', $rpid;
waitpid $rpid, 0;

$t->finish;
done_testing;
