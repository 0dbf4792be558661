#!/usr/bin/perl
# Bad input: each row gets its status, one log line an operator can act on,
# and leaves Redis exactly as it was (data and event stream).

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MdmTest;

my $t = MdmTest->new;
$t->start_nginx($t->conf(locations => <<'EOF'));
        location = /mdm/checkin { mdm_checkin; }
        location = /mdm/connect { mdm_command; }
        location = /spill/checkin {
            client_body_buffer_size 1k;
            mdm_checkin;
        }
EOF

# A enrolled with dev1, B with dev3; dev2 has never authenticated.
$t->enroll('UDID-A', 'dev1');
$t->enroll('UDID-B', 'dev3');
$t->device_cert('dev2');
$t->make_ca('otherca', 'Another CA');
$t->device_cert('stranger', ca => 'otherca');

my $tu = $t->token_update('UDID-A');
my $deep = MdmTest::plist(MessageType => 'TokenUpdate', UDID => 'UDID-A',
                          Topic => $MdmTest::TOPIC);
$deep =~ s{</dict>\s*</plist>}{'<key>X</key>' . ('<array>' x 200)
    . ('</array>' x 200) . '</dict></plist>'}e;
my $bad_bin = "bplist00" . ("\xd1\x01\x02" x 4) . ("\x00" x 26)
    . pack('C*', 0, 0, 0, 0, 0, 0, 1, 1) . pack('Q>', 3) . pack('Q>', 0)
    . pack('Q>', 0xffffff);

my @rows = (
    # name, path, body, options, status, log pattern
    ['GET instead of PUT', '/mdm/checkin', '', { method => 'GET' }, 405,
     qr/method is not PUT/],
    ['POST instead of PUT', '/mdm/checkin', $tu, { method => 'POST' }, 405,
     qr/method is not PUT/],
    ['wrong Content-Type', '/mdm/checkin', $tu, { ct => 'text/plain' }, 400,
     qr/Content-Type is not application\/x-apple-aspen-mdm-checkin/],
    ['no Content-Type', '/mdm/checkin', $tu, { ct => undef }, 400,
     qr/Content-Type is not/],
    ['empty body', '/mdm/checkin', '', {}, 400, qr/empty body/],
    ['not a plist', '/mdm/checkin', "hello, world\n", {}, 400,
     qr/body is not a property list/],
    ['truncated XML', '/mdm/checkin', substr($tu, 0, length($tu) - 40), {},
     400, qr/body is not a property list/],
    ['plist that is not a dict', '/mdm/checkin',
     qq{<?xml version="1.0"?><plist version="1.0"><array><string>x</string>}
     . qq{</array></plist>}, {}, 400, qr/not a dictionary/],
    ['binary plist (devices send XML)', '/mdm/checkin', $bad_bin, {}, 400,
     qr/binary property list \(devices send XML plists\)/],
    ['deeply nested plist', '/mdm/checkin', $deep, {}, 400,
     qr/nested too deeply/],
    ['huge plist (nginx limit)', '/mdm/checkin', $tu . (' ' x 70000), {}, 413,
     qr/client intended to send too large body/],
    ['body spilled to a temp file', '/spill/checkin', $tu . (' ' x 2000), {},
     413, qr/body larger than client_body_buffer_size; raise it/],
    ['MessageType missing', '/mdm/checkin',
     MdmTest::plist(UDID => 'UDID-A', Topic => $MdmTest::TOPIC), {}, 400,
     qr/MessageType missing/],
    ['MessageType unknown', '/mdm/checkin',
     MdmTest::plist(MessageType => 'Hello', UDID => 'UDID-A'), {}, 400,
     qr/unknown MessageType/],
    ['no UDID or EnrollmentID', '/mdm/checkin',
     MdmTest::plist(MessageType => 'TokenUpdate', Topic => $MdmTest::TOPIC,
                    Token => { data => 'x' }, PushMagic => 'p'), {}, 400,
     qr/no UDID or EnrollmentID/],
    ['UDID with a brace', '/mdm/checkin', $t->token_update('UDID-}A'), {},
     400, qr/invalid characters/],
    ['Token of the wrong type', '/mdm/checkin',
     MdmTest::plist(MessageType => 'TokenUpdate', Topic => $MdmTest::TOPIC,
                    UDID => 'UDID-A', Token => 'abc', PushMagic => 'p'), {},
     400, qr/wrong type/],
    ['TokenUpdate without PushMagic', '/mdm/checkin',
     MdmTest::plist(MessageType => 'TokenUpdate', Topic => $MdmTest::TOPIC,
                    UDID => 'UDID-A', Token => { data => 'x' }), {},
     400, qr/without PushMagic/],
    ['Topic we do not own', '/mdm/checkin',
     $t->token_update('UDID-A', Topic => 'com.apple.mgmt.External.other'), {},
     403, qr/Topic is not one of mdm_topic/],
    ['TokenUpdate from a certificate never authenticated', '/mdm/checkin',
     $t->token_update('UDID-C'), { cert => 'dev2' }, 403,
     qr/not authenticated with this certificate/],
    ['Authenticate with a certificate bound to another UDID', '/mdm/checkin',
     $t->authenticate('UDID-Z'), { cert => 'dev1' }, 403,
     qr/bound to another device \(UDID-A\)/],
    ['body UDID differs from the bound one', '/mdm/checkin',
     $t->token_update('UDID-B'), { cert => 'dev1' }, 403,
     qr/bound to another device \(UDID-A\)/],
    ['CheckOut for another device', '/mdm/checkin',
     MdmTest::plist(MessageType => 'CheckOut', UDID => 'UDID-B'),
     { cert => 'dev1' }, 403, qr/bound to another device/],
    ['no client certificate', '/mdm/checkin', $tu, { cert => undef }, 403,
     qr/no client certificate/],
    ['certificate nginx could not verify', '/mdm/checkin', $tu,
     { cert => 'stranger' }, 400, qr/client SSL certificate verify error/],
);

for my $row (@rows) {
    my ($name, $path, $body, $o, $status, $log) = @$row;
    my $state = $t->redis_state;
    my $events = $t->events_len;
    $t->mark_log;
    my $r = $t->put($path, $body, %$o);
    is $r->{status}, $status, "$name: $status";
    ok $t->wait_for_log($log, 2), "$name: logged"
        or diag $t->log_since_mark;
    my @lines = grep { /mdm: \d{3} / } split /\n/, $t->log_since_mark;
    ok @lines <= 1, "$name: one line";
    $t->state_unchanged($state, "$name: Redis unchanged");
    is $t->events_len, $events, "$name: no event";
    is $r->{body} // '', '', "$name: no body" if $status == 403;
    is $r->{headers}{allow}, 'PUT', "$name: Allow: PUT" if $status == 405;
}

# The module refuses what optional_no_ca lets through.
$t->finish;
$t = MdmTest->new;
$t->make_ca('otherca', 'Another CA');
$t->device_cert('stranger', ca => 'otherca');
$t->start_nginx($t->conf(verify => 'optional_no_ca'));
$t->mark_log;
my $r = $t->put('/mdm/checkin', $t->authenticate('UDID-S'), cert => 'stranger');
is $r->{status}, 403, 'unverified certificate under optional_no_ca: 403';
like $t->log_since_mark, qr/mdm: 403 CheckIn .*unable to (get|verify)/,
    'verification error logged';
is $t->redis_state, '', 'nothing stored';
$t->finish;

done_testing;
