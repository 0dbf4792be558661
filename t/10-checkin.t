#!/usr/bin/perl
# Check-in endpoint: real device captures and schema-accurate messages land
# in Redis, bound to the TLS client certificate.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MdmTest;

my $t = MdmTest->new;
$t->start_nginx($t->conf);
my $r;
my $redis = $t->redis;

sub data { $t->slurp(MdmTest::root() . "/t/data/$_[0]") }
sub enr { my ($d, $e) = @_; $e //= $d; return "mdm:{$d}:enr:$e" }

# --- iOS capture: Authenticate.1 + TokenUpdate.1 (with UnlockToken) ------
my $ios = '663b07bb783e9ade1dae4fbb92ea12afc0ce5b69';
$r = $t->put('/mdm/checkin', data('Authenticate.1.plist'), cert => 'ipad');
is $r->{status}, 200, 'Authenticate (capture) accepted';
is $r->{body}, '', 'empty body';

my %h = $redis->hgetall(enr($ios));
is $h{serial}, 'F5JM992LF193', 'serial stored';
is $redis->object('encoding', enr($ios)), 'listpack', 'compact encoding';
is $h{product}, 'iPad2,5', 'product stored';
is $h{os_version}, '9.3.5', 'OS stored';
is $h{enabled}, '0', 'disabled until TokenUpdate';
is $h{cert}, $t->device_cert('ipad')->{sha256}, 'certificate bound (sha256)';
is $redis->get("mdm:cert:$h{cert}"), $ios, 'reverse binding';
my $raw = $redis->hget("mdm:{$ios}:enr:$ios", 'raw_authenticate');
like $raw, qr/^bplist00/, 'raw Authenticate stored as a binary plist';
$t->spew('raw.bin', $raw);
my $xml = `plistutil -i $t->{dir}/raw.bin -o /dev/stdout 2>&1`;
like $xml, qr{<key>SerialNumber</key>\s*<string>F5JM992LF193</string>},
    'raw message content intact';

$r = $t->put('/mdm/checkin', data('TokenUpdate.1.plist'), cert => 'ipad');
is $r->{status}, 200, 'TokenUpdate (capture) accepted';
%h = $redis->hgetall(enr($ios));
is $h{enabled}, '1', 'enabled';
like $h{token}, qr/^[0-9a-f]{64}$/, 'token as lowercase hex';
ok length($h{unlock_token}) > 1000, 'UnlockToken stored raw';
my $unlock = $h{unlock_token};
ok length($h{push_magic}) > 0, 'PushMagic stored';
is $h{topic}, $MdmTest::TOPIC, 'topic stored';
is $h{token_updates}, 1, 'update counted';
is $h{awaiting_configuration}, '0', 'AwaitingConfiguration stored';

# A later TokenUpdate without UnlockToken keeps the stored one.
$r = $t->put('/mdm/checkin', $t->token_update($ios), cert => 'ipad');
is $r->{status}, 200, 'TokenUpdate without UnlockToken';
%h = $redis->hgetall(enr($ios));
is $h{unlock_token}, $unlock, 'UnlockToken kept';
is $h{token_updates}, 2, 'second update counted';
is $h{push_magic}, "PM-$ios", 'PushMagic overwritten';

# --- macOS capture: Authenticate.2 + TokenUpdate.2 -----------------------
my $mac = '66ADE930-5FDF-5EC4-8429-15640684C489';
is $t->put('/mdm/checkin', data('Authenticate.2.plist'), cert => 'mac')->{status},
    200, 'macOS Authenticate';
is $t->put('/mdm/checkin', data('TokenUpdate.2.plist'), cert => 'mac')->{status},
    200, 'macOS TokenUpdate';
%h = $redis->hgetall(enr($mac));
is $h{model_name}, 'iMac', 'ModelName stored' or diag explain \%h;
is $h{token}, unpack('H*', MIME::Base64::decode_base64(
    'G6fJAGbFD3domiTzpCXK9oowD3KeiORgqUFgItXWQsw=')), 'token hex matches';

# binary plist body: devices send XML; binary is refused (t/19)
my $bin = `plistutil -i @{[MdmTest::root()]}/t/data/TokenUpdate.2.plist -f bin -o - 2>/dev/null`
    || `plistutil -i @{[MdmTest::root()]}/t/data/TokenUpdate.2.plist -o /dev/stdout -f bin`;
SKIP: {
    skip 'plistutil cannot write binary to stdout', 2 unless $bin =~ /^bplist/;
    $r = $t->put('/mdm/checkin', $bin, cert => 'mac');
    is $r->{status}, 400, 'binary plist TokenUpdate refused';
    is $redis->hget(enr($mac), 'token_updates'), 1, 'binary not counted';
}

# --- macOS user channel -------------------------------------------------
my $uid = 'A1B2C3D4-0000-1111-2222-333344445555';
$r = $t->put('/mdm/checkin', $t->token_update($mac, UserID => $uid,
    UserShortName => 'jane', UserLongName => 'Jane Appleseed',
    _token => 'u' x 32), cert => 'mac');
is $r->{status}, 200, 'user-channel TokenUpdate';
%h = $redis->hgetall(enr($mac, "$mac:$uid"));
is $h{type}, 'User', 'user channel type';
is $h{user_short_name}, 'jane', 'short name';
is $h{token}, '75' x 32, 'user token';
ok $redis->sismember("mdm:{$mac}:users", "$mac:$uid"), 'user listed under device';

# Shared iPad user: id is UDID:UserShortName
$r = $t->put('/mdm/checkin', $t->token_update($ios,
    UserID => 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF',
    UserShortName => 'kid@school.example'), cert => 'ipad');
is $r->{status}, 200, 'Shared iPad user TokenUpdate';
is $redis->hget(enr($ios, "$ios:kid\@school.example"), 'type'), 'SharediPad',
    'Shared iPad user id';

# User Enrollment: EnrollmentID, no UDID
my $eid = 'BYOD-7F3A-11EE';
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'Authenticate',
    Topic => $MdmTest::TOPIC, EnrollmentID => $eid), cert => 'byod')->{status},
    200, 'User Enrollment Authenticate';
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'TokenUpdate',
    Topic => $MdmTest::TOPIC, EnrollmentID => $eid, Token => { data => 'x' x 32 },
    PushMagic => 'pm'), cert => 'byod')->{status}, 200, 'User Enrollment TokenUpdate';
is $redis->hget(enr($eid), 'type'), 'UserEnrollmentDevice', 'type';

# --- bootstrap token -----------------------------------------------------
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'GetBootstrapToken',
    UDID => $mac), cert => 'mac');
is $r->{status}, 200, 'GetBootstrapToken with none stored';
is $r->{body}, '', 'empty reply';
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'SetBootstrapToken',
    UDID => $mac, BootstrapToken => { data => "\x00\x01secret\xff" }), cert => 'mac');
is $r->{status}, 200, 'SetBootstrapToken';
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'GetBootstrapToken',
    UDID => $mac), cert => 'mac');
is $r->{status}, 200, 'GetBootstrapToken';
like $r->{body}, qr{<key>BootstrapToken</key>\s*<data>\s*AAFzZWNyZXT/\s*</data>},
    'token returned as plist data';
is $r->{headers}{'content-type'}, 'application/xml', 'xml content type';
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'SetBootstrapToken',
    UDID => $mac), cert => 'mac');
is $r->{status}, 200, 'SetBootstrapToken without token';
ok !$redis->hexists(enr($mac), 'bootstrap_token'), 'deleted';

# --- UserAuthenticate: declined by default --------------------------------
$t->mark_log;
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'UserAuthenticate',
    UDID => $mac, UserID => 'net-user-1'), cert => 'mac');
is $r->{status}, 410, 'UserAuthenticate declined with 410';

# --- GetToken: not configured; DeclarativeManagement: t/56-ddm.t -----------
my $before = $t->redis_state;
$t->mark_log;
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'GetToken',
    UDID => $mac, TokenServiceType => 'com.apple.maid'), cert => 'mac');
is $r->{status}, 400, 'GetToken not configured: 400';
like $t->log_since_mark, qr/mdm: 400 GetToken .*no token service/, 'logged';
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'DeclarativeManagement',
    UDID => $mac), cert => 'mac');
is $r->{status}, 400, 'DeclarativeManagement without Endpoint: 400';
$t->state_unchanged($before, 'nothing changed');

# --- CheckOut disables device and its user channels ---------------------
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'CheckOut',
    Topic => $MdmTest::TOPIC, UDID => $mac), cert => 'mac');
is $r->{status}, 200, 'CheckOut';
is $redis->hget(enr($mac), 'enabled'), '0', 'device disabled';
is $redis->hget(enr($mac, "$mac:$uid"), 'enabled'), '0', 'user disabled';

# --- events ---------------------------------------------------------------
my $ev = $redis->xrange('mdm:events', '-', '+');
my @types = map { my %f = @{ $_->[1] }; $f{type} } @$ev;
ok scalar(grep { $_ eq 'Authenticate' } @types) >= 3, 'Authenticate events';
ok scalar(grep { $_ eq 'CheckOut' } @types) == 1, 'CheckOut event';
my %last = @{ $ev->[-1][1] };
is $last{id}, $mac, 'event carries the enrollment id';
like $last{ms}, qr/^\d{13}$/, 'event carries the time';

# --- keep-alive: later requests reuse the connection's certificate hash ----
{
    my $s = $t->connect(cert => 'mac');
    my @st = map {
        $t->request($s, '/mdm/connect',
                    MdmTest::plist(UDID => $mac, Status => 'Idle'),
                    keepalive => 1)->{status}
    } 1 .. 3;
    close $s;
    is_deeply \@st, [200, 200, 200], 'three requests on one connection';
    my $other = $t->put('/mdm/connect',
                        MdmTest::plist(UDID => $mac, Status => 'Idle'),
                        cert => 'ipad');
    is $other->{status}, 403, 'a new connection with another certificate: 403';
}

# --- log_format variables --------------------------------------------------
my $acc = $t->slurp('access.log');
like $acc, qr/^200 TokenUpdate id=\Q$ios\E /m, '$mdm_message_type and id logged';
like $acc, qr/^400 GetToken .*err="GetToken: no token service/m, '$mdm_error logged';

$t->finish;

# --- UserAuthenticate accepted with the directive --------------------------
my $t2 = MdmTest->new;
$t2->start_nginx($t2->conf(extra => 'mdm_user_authenticate accept;'));
$t2->enroll('MAC2', 'm2');
$r = $t2->put('/mdm/checkin', MdmTest::plist(MessageType => 'UserAuthenticate',
    UDID => 'MAC2', UserID => 'net-user-1'), cert => 'm2');
is $r->{status}, 200, 'UserAuthenticate accepted';
like $r->{body}, qr{<key>DigestChallenge</key>\s*<string></string>},
    'zero-length DigestChallenge';
$r = $t2->put('/mdm/checkin', MdmTest::plist(MessageType => 'UserAuthenticate',
    UDID => 'MAC2', UserID => 'net-user-1', DigestResponse => 'x'), cert => 'm2');
is $r->{status}, 200, 'second UserAuthenticate';
is $r->{body}, '', 'empty reply';
$t2->finish;

done_testing;
