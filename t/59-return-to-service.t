#!/usr/bin/perl
# ReturnToService check-in (iOS/visionOS 26): the answer from the device's
# own setting, else the default, else Enabled false; profile bytes served
# as stored; the escrowed BootstrapToken (sealed) with an enabled answer;
# the user channel, a stranger's certificate; mdmctl rts set/show/clear.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MIME::Base64 qw(decode_base64);
use JSON::PP qw(decode_json);
use MdmTest;

my $BIN = MdmTest::root() . '/mdmctl/mdmctl';
plan skip_all => "build mdmctl first ($BIN)" unless -x $BIN;

my $t = MdmTest->new;
my $dir = $t->dir;
$ENV{MDM_REDIS} = 'unix:' . $t->redis_sock;
delete @ENV{qw(MDM_REDIS_USER MDM_REDIS_PASSWORD)};

# BootstrapTokens sealed at rest, so the answer proves the module opens them
is $t->mdmctl('secret', 'keygen', '--id', 'k1', "$dir/secret.key")->{rc}, 0,
    'secret key made';
$t->start_nginx($t->conf(http => "mdm_secret_key $dir/secret.key;",
    extra => 'location = /metrics { mdm_metrics; mdm_metrics_cache 0; }'));
my $redis = $t->redis;

$t->enroll('RTS1', 'rts1');
$t->enroll('RTS2', 'rts2');

sub rts_msg { MdmTest::plist(MessageType => 'ReturnToService', @_) }

# The answer: status, and the ReturnToService dict as { key => value }
# (booleans 1/0, data decoded), read strictly: nothing else in the plist.
sub ask {
    my ($udid, %o) = @_;
    my $r = $t->put('/mdm/checkin', rts_msg(UDID => $udid, @{ $o{kv} // [] }),
                    cert => $o{cert} // lc $udid);
    return $r unless $r->{status} == 200;
    my ($inner) = $r->{body} =~ m{\A<\?xml[^>]*>\s*<!DOCTYPE[^>]*>\s*
        <plist\ version="1\.0">\s*<dict>\s*<key>ReturnToService</key>\s*
        <dict>(.*?)</dict>\s*</dict>\s*</plist>\s*\z}xs;
    die "not a ReturnToService plist: $r->{body}" unless defined $inner;
    my %d;
    while ($inner =~ m{\G\s*<key>(\w+)</key>\s*(<true/>|<false/>|<data>([^<]*)</data>)}gc) {
        $d{$1} = $2 eq '<true/>' ? 1 : $2 eq '<false/>' ? 0 : decode_base64($3);
    }
    die "unread: " . substr($inner, pos($inner) // 0)
        unless ($inner =~ /\G\s*\z/gc);
    $r->{rts} = \%d;
    return $r;
}

sub ctl { $t->mdmctl(@_) }

# one error line naming the command, exit 1 (2 for usage)
sub ctl_err {
    my ($rc, $re, $name, @args) = @_;
    my $c = ctl(@args);
    ok $c->{rc} == $rc && $c->{err} =~ $re && $c->{err} =~ tr/\n// == 1
        && $c->{out} eq '', $name or diag explain $c;
}

# profiles: a Wi-Fi one (UTF-8 SSID), an MDM one, a CMS-signed Wi-Fi one
my $wifi = MdmTest::plist(PayloadType => 'Configuration', PayloadVersion => { int => 1 },
    PayloadIdentifier => 'rts.wifi', PayloadUUID => 'A1B2C3D4-0000-4000-8000-000000000001',
    PayloadDisplayName => 'Wi-Fi', PayloadContent => [ { dict => [
        PayloadType => 'com.apple.wifi.managed', PayloadVersion => { int => 1 },
        PayloadIdentifier => 'rts.wifi.1', PayloadUUID => 'A1B2C3D4-0000-4000-8000-000000000002',
        SSID_STR => "caf\xc3\xa9-net", EncryptionType => 'WPA2', Password => 'pw',
        AutoJoin => \1 ] } ]);
my $mdm = MdmTest::plist(PayloadType => 'Configuration', PayloadVersion => { int => 1 },
    PayloadIdentifier => 'rts.mdm', PayloadUUID => 'A1B2C3D4-0000-4000-8000-000000000003',
    PayloadContent => [ { dict => [
        PayloadType => 'com.apple.mdm', PayloadVersion => { int => 1 },
        PayloadIdentifier => 'rts.mdm.1', PayloadUUID => 'A1B2C3D4-0000-4000-8000-000000000004',
        ServerURL => 'https://mdm.example.com/mdm', Topic => $MdmTest::TOPIC,
        IdentityCertificateUUID => 'A1B2C3D4-0000-4000-8000-000000000005',
        AccessRights => { int => 8191 } ] } ]);
$t->spew('wifi.plist', $wifi);
$t->spew('mdm.plist', $mdm);
$t->device_cert('signer');
$t->run_cmd("openssl cms -sign -binary -nodetach -outform DER -in $dir/wifi.plist"
    . " -signer $dir/signer.crt -inkey $dir/signer.key -out $dir/wifi.der");
my $wifi_der = $t->slurp('wifi.der');
like $wifi_der, qr/^\x30/, 'CMS-signed Wi-Fi profile (DER)';

# --- nothing configured ------------------------------------------------------
$t->mark_log;
my $ev = $t->events_len;
my $r = ask('RTS1');
is $r->{status}, 200, 'nothing configured: 200';
is $r->{headers}{'content-type'}, 'application/xml', 'XML plist';
is_deeply $r->{rts}, { Enabled => 0 }, 'nothing configured: Enabled false, nothing else';
is $t->events_len, $ev + 1, 'one event';
my ($last) = @{ $redis->xrevrange('mdm:events', '+', '-', 'COUNT', 1) };
my %f = @{ $last->[1] };
is_deeply [ @f{qw(type id enabled setting)} ], ['ReturnToService', 'RTS1', '0', 'none'],
    'event: type, id, enabled, setting';
like $t->slurp('access.log'), qr/^200 ReturnToService id=RTS1 /m,
    '$mdm_message_type ReturnToService';

my $c = ctl('rts', 'show', 'RTS1');
is $c->{rc}, 0, 'rts show: nothing set' or diag $c->{err};
like $c->{out}, qr/^setting\s+none: Enabled false$/m, 'show: none';
like $c->{out}, qr/^enabled\s+no$/m, 'show: not enabled';
$c = ctl('rts', 'show', 'RTS1', '--json');
is_deeply decode_json($c->{out}), { id => 'RTS1', source => 'none', enabled => JSON::PP::false,
    wifi => undef, mdm => undef, bootstrap_token => JSON::PP::false, updated_ms => undef },
    'show --json: none';

# --- the default: served to any device ------------------------------------------
$c = ctl('rts', 'set', 'default', '--wifi', "$dir/wifi.plist");
is $c->{rc}, 0, 'rts set default --wifi' or diag $c->{err};
is $c->{out}, "default: ReturnToService enabled, Wi-Fi profile " . length($wifi)
    . " bytes\n", 'set: one line';
for my $d ('RTS1', 'RTS2') {
    $r = ask($d);
    is_deeply $r->{rts}, { Enabled => 1, WiFiProfileData => $wifi },
        "$d: the default, Wi-Fi profile byte-exact";
}
$c = ctl('rts', 'show', 'RTS2', '--json');
my $j = decode_json($c->{out});
is $j->{source}, 'default', 'show --json: from the default';
is $j->{wifi}{bytes}, length($wifi), 'show --json: Wi-Fi size';
like $j->{wifi}{sha256}, qr/^[0-9a-f]{64}$/, 'show --json: Wi-Fi sha256';
my $sha = lc((split ' ', $t->run_cmd("sha256sum $dir/wifi.plist"))[0]);
is $j->{wifi}{sha256}, $sha, 'sha256 of the stored bytes = of the file';
like ctl('rts', 'show', 'RTS2')->{out}, qr/^setting\s+the default \(none of its own\)$/m,
    'show: the default';

# --- a device's own setting overrides the default, whole ---------------------------
$c = ctl('rts', 'set', 'RTS1', '--wifi', "$dir/wifi.der", '--mdm', "$dir/mdm.plist",
         '--json');
is $c->{rc}, 0, 'rts set RTS1 --wifi signed --mdm --json' or diag $c->{err};
$j = decode_json($c->{out});
is_deeply [ @$j{qw(id source enabled wifi_bytes mdm_bytes)} ],
    ['RTS1', 'device', JSON::PP::true, length($wifi_der), length($mdm)], 'set --json';
$r = ask('RTS1');
is_deeply $r->{rts}, { Enabled => 1, WiFiProfileData => $wifi_der, MDMProfileData => $mdm },
    'RTS1: its own setting (CMS bytes and MDM profile byte-exact)';
is_deeply ask('RTS2')->{rts}, { Enabled => 1, WiFiProfileData => $wifi },
    'RTS2: still the default';
$c = ctl('rts', 'show', 'RTS1');
my $n = length $wifi_der;
my $m = length $mdm;
like $c->{out}, qr/\Aid              RTS1
setting         its own
enabled         yes
wifi profile    $n bytes, sha256 [0-9a-f]{64}
mdm profile     $m bytes, sha256 [0-9a-f]{64}
bootstrap token none
updated         \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ
\z/, 'show: the table' or diag $c->{out};

# options before the target too
$c = ctl('rts', 'set', '--disable', 'RTS2');
is $c->{rc}, 0, 'rts set --disable RTS2' or diag $c->{err};
is $c->{out}, "RTS2: ReturnToService disabled\n", 'disabled: one line';
is_deeply ask('RTS2')->{rts}, { Enabled => 0 },
    'disabled: Enabled false, nothing else, whatever the default';
$c = ctl('rts', 'set', 'RTS2', '--disable', '--wifi', "$dir/wifi.plist");
is_deeply ask('RTS2')->{rts}, { Enabled => 0 },
    'disabled with a staged profile: still only Enabled false';

# --- every byte value round-trips (redis-cli shape: DER) ---------------------------
my $bytes = "\x30" . join('', map { chr } 0 .. 255) x 64 . "\x00";
is_deeply [ $t->fcall('mdm_rts_set', [], 'RTS1', '1', $bytes, '') ],
    ['RTS1', 'device', '1', length($bytes), 0, $redis->hget('mdm:rts:RTS1', 'ms')],
    'mdm_rts_set: reply';
is ask('RTS1')->{rts}{WiFiProfileData}, $bytes, 'all 256 byte values, byte-exact';
ok !exists ask('RTS1')->{rts}{MDMProfileData}, 'no MDMProfileData when not given';

# --- the escrowed BootstrapToken goes with an enabled answer ----------------------
my $bt = "\x00\x01boot\xff" x 8;
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'SetBootstrapToken',
    UDID => 'RTS1', BootstrapToken => { data => $bt }), cert => 'rts1')->{status},
    200, 'SetBootstrapToken';
like $redis->hget('mdm:{RTS1}:enr:RTS1', 'bootstrap_token'), qr/^mdmS\x01/,
    'stored sealed';
is ask('RTS1')->{rts}{BootstrapToken}, $bt, 'BootstrapToken opened and sent';
like ctl('rts', 'show', 'RTS1')->{out}, qr/^bootstrap token escrowed/m,
    'show: bootstrap token escrowed';
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'SetBootstrapToken',
    UDID => 'RTS2', BootstrapToken => { data => $bt }), cert => 'rts2')->{status},
    200, 'SetBootstrapToken RTS2';
is_deeply ask('RTS2')->{rts}, { Enabled => 0 }, 'no token with a disabled answer';
# a sealed token that does not open: 503, as for GetBootstrapToken
my $sealed = $redis->hget('mdm:{RTS1}:enr:RTS1', 'bootstrap_token');
$redis->hset('mdm:{RTS1}:enr:RTS1', 'bootstrap_token', $sealed . 'x');
$t->mark_log;
$r = ask('RTS1');
is $r->{status}, 503, 'a token that does not open: 503';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
$redis->hset('mdm:{RTS1}:enr:RTS1', 'bootstrap_token', $sealed);
is ask('RTS1')->{rts}{BootstrapToken}, $bt, 'fixed: sent again';

# --- refusals: one line, nothing changed ---------------------------------------------
is $t->put('/mdm/checkin', $t->token_update('RTS1', UserID => 'U1'), cert => 'rts1')
    ->{status}, 200, 'a user channel';
my @bad = (
    ['user channel', 400, qr/ReturnToService is for the device channel/,
     rts_msg(UDID => 'RTS1', UserID => 'U1'), 'rts1'],
    ['Shared iPad user', 400, qr/ReturnToService is for the device channel/,
     rts_msg(UDID => 'RTS1', UserID => 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF',
             UserShortName => 'kid'), 'rts1'],
    ['User Enrollment', 400, qr/ReturnToService is for the device channel/,
     rts_msg(EnrollmentID => 'RTS1'), 'rts1'],
    ['no UDID', 400, qr/no UDID or EnrollmentID/, rts_msg(), 'rts1'],
    ['unbound certificate', 403, qr/device has not authenticated with this certificate|not the one bound/,
     rts_msg(UDID => 'RTS1'), 'stranger'],
    ['another device\'s certificate', 403, qr/bound to another device \(RTS2\)/,
     rts_msg(UDID => 'RTS1'), 'rts2'],
    ['unknown device', 403, qr/device has not authenticated/,
     rts_msg(UDID => 'NOPE'), 'stranger2'],
);
for my $b (@bad) {
    my ($name, $status, $re, $body, $cert) = @$b;
    my $before = $t->redis_state;
    my $n = $t->events_len;
    $t->mark_log;
    $r = $t->put('/mdm/checkin', $body, cert => $cert);
    is $r->{status}, $status, "$name: $status";
    is $r->{body}, '', "$name: no body";
    my @l = $t->mdm_errors_since_mark;
    ok @l == 1 && $l[0] =~ $re, "$name: one log line" or diag explain \@l;
    $t->state_unchanged($before, "$name: nothing changed");
    is $t->events_len, $n, "$name: no event";
}

# --- mdmctl: errors, one line, nothing changed -------------------------------------------
$t->spew('empty', '');
$t->spew('junk', "not a profile\n");
$t->spew('big.plist', '<plist>' . ('x' x (1024 * 1024)) . '</plist>');
$t->spew('notprofile.plist', MdmTest::plist(PayloadType => 'Other'));
my $before = $t->redis_state;
ctl_err(1, qr/^mdmctl rts set: unknown device id NOPE$/, 'set: unknown device',
        'rts', 'set', 'NOPE');
ctl_err(1, qr/^mdmctl rts show: unknown device id NOPE$/, 'show: unknown device',
        'rts', 'show', 'NOPE');
ctl_err(1, qr/^mdmctl rts clear: unknown device id NOPE$/, 'clear: unknown device',
        'rts', 'clear', 'NOPE');
ctl_err(1, qr/not a device id: RTS1:U1/, 'set: a user channel id', 'rts', 'set', 'RTS1:U1');
ctl_err(1, qr/empty: empty file$/, 'set: empty file', 'rts', 'set', 'RTS1', '--wifi',
        "$dir/empty");
ctl_err(1, qr/junk: neither a property list nor CMS signed data$/, 'set: not a profile',
        'rts', 'set', 'RTS1', '--mdm', "$dir/junk");
ctl_err(1, qr/not a configuration profile/, 'set: a plist that is no profile',
        'rts', 'set', 'RTS1', '--wifi', "$dir/notprofile.plist");
ctl_err(1, qr/mdm\.plist: the profile must hold at least one com\.apple\.wifi\.managed payload, not 0$/,
        'set: the MDM profile as --wifi', 'rts', 'set', 'RTS1', '--wifi', "$dir/mdm.plist");
ctl_err(1, qr/the profile must hold exactly one com\.apple\.mdm payload, not 0$/,
        'set: the Wi-Fi profile as --mdm', 'rts', 'set', 'RTS1', '--mdm', "$dir/wifi.plist");
ctl_err(1, qr/No such file/, 'set: missing file', 'rts', 'set', 'RTS1', '--wifi',
        "$dir/none");
ctl_err(2, qr/give one device id or "default"/, 'set: no target', 'rts', 'set');
ctl_err(2, qr/give one device id or "default"/, 'show: two targets', 'rts', 'show',
        'RTS1', 'RTS2');
ctl_err(2, qr/--wifi is an option of rts set only/, 'show --wifi', 'rts', 'show',
        'RTS1', '--wifi', "$dir/wifi.plist");
ctl_err(2, qr/unknown option --nope/, 'unknown option', 'rts', 'set', 'RTS1', '--nope');
ctl_err(2, qr/unknown command "nope"/, 'unknown verb', 'rts', 'nope');
$t->state_unchanged($before, 'mdmctl errors: nothing changed');

# the size cap and the shape, in mdm_rts_set itself (redis-cli writes too)
sub fcall_err {
    my @a = @_;
    my $r = eval { $t->fcall('mdm_rts_set', [], @a) };
    return $@ // '';
}
like fcall_err('RTS1', '1', '<' . ('x' x (1024 * 1024)), ''),
    qr/wifi profile of 1048577 bytes is over 1048576/, 'mdm_rts_set: over 1 MiB';
ok !fcall_err('RTS1', '1', '<' . ('x' x (1024 * 1024 - 1)), ''), 'exactly 1 MiB taken';
like fcall_err('RTS1', '1', '', 'hello'),
    qr/mdm profile is neither a property list nor CMS signed data/, 'mdm_rts_set: shape';
like fcall_err('RTS1', 'yes', '', ''), qr/enabled must be 1 or 0/, 'mdm_rts_set: enabled';
like fcall_err('RTS1', '1', ''), qr/usage: mdm_rts_set/, 'mdm_rts_set: arguments';
like fcall_err('default:x', '1', '', ''), qr/not a device id/, 'mdm_rts_set: id';
$t->fcall('mdm_rts_set', [], 'RTS1', '1', $bytes, '');
$before = $t->redis_state;

# the CLI's own size check is mdm_rts_set's: the message names the cap
my $bigwifi = $wifi;
$bigwifi =~ s{</dict>\s*</plist>}{'<key>Pad</key><string>' . ('x' x (1024 * 1024)) . "</string></dict></plist>"}e;
$t->spew('bigwifi.plist', $bigwifi);
ctl_err(1, qr/^mdmctl rts set: wifi profile of \d+ bytes is over 1048576$/,
        'set: over 1 MiB', 'rts', 'set', 'RTS1', '--wifi', "$dir/bigwifi.plist");
$t->state_unchanged($before, 'size errors: nothing changed');

# --- audit ------------------------------------------------------------------------------
my %audit = map { my %h = @{ $_->[1] }; ($h{type} . ' ' . $h{id} => \%h) }
            @{ $redis->xrange('mdm:audit', '-', '+') };
my $a = $audit{'ReturnToServiceSet RTS1'};
is_deeply [ @$a{qw(enabled wifi_bytes mdm_bytes)} ], ['1', length($bytes), 0],
    'audit: ReturnToServiceSet with sizes';
ok $audit{'ReturnToServiceSet default'}, 'audit: the default set';

# --- clear: back to the default, then to nothing -------------------------------------------
$c = ctl('rts', 'clear', 'RTS1');
is $c->{out}, "RTS1: setting cleared\n", 'rts clear RTS1';
is_deeply ask('RTS1')->{rts}, { Enabled => 1, WiFiProfileData => $wifi, BootstrapToken => $bt },
    'cleared: the default again (with its token)';
is_deeply decode_json(ctl('rts', 'clear', 'RTS1', '--json')->{out}),
    { id => 'RTS1', cleared => JSON::PP::false }, 'clear again --json: nothing to clear';
is ctl('rts', 'clear', 'default')->{out}, "default: setting cleared\n", 'rts clear default';
is_deeply ask('RTS1')->{rts}, { Enabled => 0 }, 'nothing configured again: Enabled false';
ok $redis->xlen('mdm:audit') > 0
   && grep({ my %h = @{ $_->[1] }; $h{type} eq 'ReturnToServiceClear' }
           @{ $redis->xrange('mdm:audit', '-', '+') }) == 2, 'audit: two clears';

# --- a re-enrollment keeps the setting; forget deletes it ------------------------------
ok $redis->exists('mdm:rts:RTS2'), 'RTS2 has a setting';
$t->enroll('RTS2', 'rts2');
ok $redis->exists('mdm:rts:RTS2'), 'kept across a re-enrollment (erase and re-enroll)';
is ctl('forget', 'RTS2')->{rc}, 0, 'mdmctl forget RTS2';
ok !$redis->exists('mdm:rts:RTS2'), 'forget deletes the setting';

# --- metrics count the type ---------------------------------------------------------------
$r = $t->put('/metrics', undef, method => 'GET', ct => undef);
like $r->{body}, qr/^mdm_requests_total\{type="ReturnToService",code="200"\} [1-9]\d*$/m,
    'metrics: ReturnToService 200';
like $r->{body}, qr/^mdm_requests_total\{type="ReturnToService",code="400"\} 4$/m,
    'metrics: ReturnToService 400 (the channels, no UDID)';

$t->finish;
done_testing;
