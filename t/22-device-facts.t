#!/usr/bin/perl
# Bounded device facts, and Content-Type on the command endpoint.
#
# Each stored fact has a limit (README, "Limits"): names a device chose
# (DeviceName, UserLongName, ModelName) are cut to 256 bytes at a UTF-8
# character boundary with one log line, in the stored raw message too;
# identifiers and tokens over their limit are refused (400, one line,
# Redis unchanged).
#
# Reports are taken on mdm_command with any Content-Type or none (as
# NanoMDM and MicroMDM do; a device simulator in wide use sends none); on
# mdm_endpoint the check-in Content-Type still tells check-ins apart.

use strict;
use warnings;
use utf8;
use lib 't/lib';
use Test::More;
use Encode qw(encode decode);
use MdmTest;

$SIG{PIPE} = 'IGNORE';

my $big = 'client_max_body_size 2m; client_body_buffer_size 2m;';
my $t = MdmTest->new;
$t->start_nginx($t->conf(locations => <<"EOF"));
        location = /mdm/checkin { $big mdm_max_body checkin=2m; mdm_checkin; }
        location = /mdm/connect { mdm_command; }
        location = /mdm { mdm_endpoint; }
        location = /default/checkin { $big mdm_checkin; }
EOF
my $redis = $t->redis;
my $r;

sub enr { my ($d, $e) = @_; "mdm:{$d}:enr:" . ($e // $d) }

sub lines_since_mark {
    return grep { /mdm: / && /\[(warn|error)\]/ } split /\n/,
        $t->log_since_mark;
}

# --- a 1.9 MB DeviceName ---------------------------------------------------
my $name = 'a' . ('é' x 950_000);                   # 1,900,001 bytes
my $auth = $t->authenticate('UDID-N', DeviceName => $name);
$auth = encode('UTF-8', $auth);
ok length($auth) > 1_900_000, 'Authenticate of ' . length($auth) . ' bytes';

$t->mark_log;
$r = $t->put('/default/checkin', $auth, cert => 'devn');
is $r->{status}, 413, 'over the default check-in limit (64k): 413';
ok $t->wait_for_log(qr/over "mdm_max_body checkin=65536"/, 2), '413 logged';

$t->mark_log;
$r = $t->put('/mdm/checkin', $auth, cert => 'devn');
is $r->{status}, 200, 'within mdm_max_body checkin=2m: accepted';
my %h = $redis->hgetall(enr('UDID-N'));
my $stored = $h{device_name} // '';
is length($stored), 255, 'device_name cut to 255 bytes (256 would split é)';
my $chars = eval { decode('UTF-8', $stored, Encode::FB_CROAK) };
ok defined $chars, 'device_name is valid UTF-8';
is $chars, substr($name, 0, 128), 'device_name is the first 128 characters';
ok length($h{raw_authenticate} // '') < 2048,
    'raw_authenticate holds the cut name too (' . length($h{raw_authenticate})
    . ' bytes)';
$t->spew('raw.bin', $h{raw_authenticate});
my $raw = decode('UTF-8', qx{plistutil -i $t->{dir}/raw.bin -o /dev/stdout 2>&1});
like $raw, qr{<key>DeviceName</key>\s*<string>a(é|&#233;){127}</string>}s,
    'raw message: the cut name';
my @l = lines_since_mark();
is scalar(@l), 1, 'one log line';
like $l[0] // '', qr/mdm: Authenticate id="UDID-N": DeviceName of 1900001 bytes cut to 256 bytes/,
    'the line names the field and both sizes';
ok length($l[0] // '') < 1000, 'and not the value';

# --- other names: cut at 256 bytes exactly when that is a boundary ---------
$t->mark_log;
my $long = 'L' x 300;
$r = $t->put('/mdm/checkin', $t->token_update('UDID-N', UserID => 'U-1',
             UserShortName => 'jane', UserLongName => $long,
             _token => 'u' x 32), cert => 'devn');
is $r->{status}, 200, 'user-channel TokenUpdate with a 300-byte UserLongName';
is $redis->hget(enr('UDID-N', 'UDID-N:U-1'), 'user_long_name'), 'L' x 256,
    'UserLongName cut to 256 bytes';
like join("\n", lines_since_mark()), qr/UserLongName of 300 bytes cut to 256/,
    'logged';

$r = $t->put('/mdm/checkin', encode('UTF-8', $t->authenticate('UDID-M',
             DeviceName => 'x' x 256, ModelName => '€' x 100,
             OSVersion => '9' x 64)), cert => 'devm');
is $r->{status}, 200, 'names at their limit and a 64-byte OSVersion: 200';
%h = $redis->hgetall(enr('UDID-M'));
is $h{device_name}, 'x' x 256, 'a 256-byte DeviceName is kept whole';
is $h{model_name}, encode('UTF-8', '€' x 85), 'ModelName cut to 85 euro signs '
    . '(255 bytes)';
is $h{os_version}, '9' x 64, 'OSVersion at its limit kept';

# --- identifiers and tokens over their limit: refused ----------------------
my @refused = (
    ['SerialNumber of 65 bytes', $t->authenticate('UDID-R',
        SerialNumber => 'S' x 65), qr/SerialNumber longer than 64 bytes/],
    ['OSVersion of 65 bytes', $t->authenticate('UDID-R',
        OSVersion => '1' x 65), qr/OSVersion longer than 64 bytes/],
    ['IMEI of 65 bytes', $t->authenticate('UDID-R', IMEI => '3' x 65),
     qr/IMEI longer than 64 bytes/],
    ['Topic of 257 bytes', $t->authenticate('UDID-R', Topic => 'T' x 257),
     qr/Topic longer than 256 bytes/],
    ['PushMagic of 129 bytes', $t->token_update('UDID-A',
        PushMagic => 'P' x 129), qr/PushMagic longer than 128 bytes/],
    ['Token of 129 bytes', $t->token_update('UDID-A', _token => 'k' x 129),
     qr/Token longer than 128 bytes/],
    ['UnlockToken of 16,385 bytes', $t->token_update('UDID-A',
        UnlockToken => { data => 'u' x 16_385 }),
     qr/UnlockToken longer than 16384 bytes/],
    ['UserShortName of 257 bytes', $t->token_update('UDID-A',
        UserID => 'U-2', UserShortName => 's' x 257, _token => 'v' x 32),
     qr/UserShortName longer than 256 bytes/],
);
$t->enroll('UDID-A', 'deva');
for my $row (@refused) {
    my ($what, $body, $log) = @$row;
    my $state = $t->redis_state;
    my $events = $t->events_len;
    $t->mark_log;
    my $cert = $body =~ /UDID-R/ ? 'devr' : 'deva';
    $r = $t->put('/mdm/checkin', $body, cert => $cert);
    is $r->{status}, 400, "$what: 400";
    ok $t->wait_for_log($log, 2), "$what: logged" or diag $t->log_since_mark;
    is scalar(lines_since_mark()), 1, "$what: one line";
    $t->state_unchanged($state, "$what: Redis unchanged");
    is $t->events_len, $events, "$what: no event";
}

# --- Content-Type on the command endpoint ----------------------------------
sub cmd {
    my ($uuid) = @_;
    return MdmTest::plist(CommandUUID => $uuid,
        Command => { dict => [RequestType => 'DeviceInformation',
                              Queries => ['SerialNumber']] });
}
sub uuid_of {
    ($_[0]{body} =~ m{<key>CommandUUID</key>\s*<string>([^<]+)})[0] // '';
}
my $idle = MdmTest::plist(Status => 'Idle', UDID => 'UDID-A');
my $ack = sub {
    MdmTest::plist(Status => 'Acknowledged', UDID => 'UDID-A',
                   CommandUUID => $_[0]);
};

my $n = 0;
for my $case (['no Content-Type', undef], ['text/plain', 'text/plain'],
              ['application/xml', 'application/xml; charset=UTF-8'],
              ['the check-in type', 'application/x-apple-aspen-mdm-checkin'])
{
    my ($what, $ct) = @$case;
    my $uuid = 'CT-' . ++$n;
    $redis->fcall('mdm_enqueue', 0, cmd($uuid), 5, 0, 1, 'UDID-A');
    $r = $t->put('/mdm/connect', $idle, cert => 'deva', ct => $ct);
    is $r->{status}, 200, "mdm_command, $what: Idle report taken";
    is uuid_of($r), $uuid, "mdm_command, $what: the queued command sent";
    $r = $t->put('/mdm/connect', $ack->($uuid), cert => 'deva', ct => $ct);
    is $r->{status}, 200, "mdm_command, $what: Acknowledged taken";
    is $redis->hget("mdm:cmdt:$uuid", 'UDID-A'), 'Acknowledged',
        "mdm_command, $what: acknowledged in Redis";
}

# still strict on method, body, identity and plist
$r = $t->put('/mdm/connect', $idle, cert => 'deva', ct => undef,
             method => 'POST');
is $r->{status}, 405, 'mdm_command without Content-Type: POST still 405';
$r = $t->put('/mdm/connect', '', cert => 'deva', ct => undef);
is $r->{status}, 400, 'mdm_command without Content-Type: empty body 400';
$r = $t->put('/mdm/connect', "hello\n", cert => 'deva', ct => undef);
is $r->{status}, 400, 'mdm_command without Content-Type: not a plist 400';
$r = $t->put('/mdm/connect', $idle, cert => undef, ct => undef);
is $r->{status}, 403, 'mdm_command without Content-Type: no certificate 403';
$r = $t->put('/mdm/connect', $idle, cert => 'devr', ct => undef);
is $r->{status}, 403, 'mdm_command without Content-Type: another device 403';

# mdm_endpoint: the check-in type makes a check-in, anything else a report
$redis->fcall('mdm_enqueue', 0, cmd('EP-1'), 5, 0, 1, 'UDID-A');
$r = $t->put('/mdm', $idle, cert => 'deva', ct => undef);
is $r->{status}, 200, 'mdm_endpoint, no Content-Type: a report';
is uuid_of($r), 'EP-1', 'mdm_endpoint, no Content-Type: the command sent';
$r = $t->put('/mdm', $ack->('EP-1'), cert => 'deva', ct => 'text/plain');
is $r->{status}, 200, 'mdm_endpoint, another Content-Type: a report';
my $tu = $redis->hget(enr('UDID-A'), 'token_updates');
$r = $t->put('/mdm', $t->token_update('UDID-A'), cert => 'deva',
             ct => 'application/x-apple-aspen-mdm-checkin');
is $r->{status}, 200, 'mdm_endpoint, check-in Content-Type: a check-in';
is $redis->hget(enr('UDID-A'), 'token_updates'), $tu + 1,
    'mdm_endpoint: the TokenUpdate counted';
$t->mark_log;
$r = $t->put('/mdm', $t->token_update('UDID-A'), cert => 'deva', ct => undef);
is $r->{status}, 400, 'mdm_endpoint, check-in without its Content-Type: 400';
ok $t->wait_for_log(qr/mdm: 400 Report .*Status missing/, 2),
    'taken as a report, refused for its missing Status';

# mdm_checkin keeps its Content-Type
$r = $t->put('/mdm/checkin', $t->token_update('UDID-A'), cert => 'deva',
             ct => undef);
is $r->{status}, 400, 'mdm_checkin without Content-Type: still 400';

$t->finish;
done_testing;
