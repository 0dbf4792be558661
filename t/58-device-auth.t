#!/usr/bin/perl
# mdm_device_auth: files served by nginx itself (alias, ranges, HEAD) to
# enrolled devices only, by the certificate binding of the check-ins;
# $mdm_enrollment_id in logs and paths. Refusals change nothing in Redis.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(time);
use MdmTest;
use MdmSign qw(mdm_signature);

my $t = MdmTest->new;
my $d = $t->dir;
my $r;

my %c = map { $_ => $t->device_cert($_) }
        qw(devA devB devOut devAuth devRev stranger cnA);

# --- configuration errors ---------------------------------------------------
sub conf_error {
    my ($locations, $http) = @_;
    $t->write_conf($t->conf(locations => $locations, http => $http // ''));
    return $t->nginx_test;
}
like conf_error("        location = /x { mdm_checkin; mdm_device_auth; }\n"),
    qr/"mdm_device_auth" in a device endpoint's location/,
    'refused in an endpoint location';
like conf_error("        location /a/ { mdm_device_auth; mdm_device_auth; }\n"),
    qr/"mdm_device_auth" directive is duplicate/, 'duplicate refused';
like conf_error("        location /a/ { mdm_device_auth; "
                . "mdm_identity signature; }\n"),
    qr/needs "mdm_device_ca"/, 'signature identity needs mdm_device_ca';

# --- the files ---------------------------------------------------------------
mkdir "$d/$_" for qw(assets devices devices/DEVA devices/DEVB);
my $asset = join '', map { chr(65 + $_ % 26) } 0 .. 9999;
$t->spew('assets/pkg.bin', $asset);
$t->spew('devices/DEVA/mine.txt', "for DEVA\n");
$t->spew('devices/DEVB/mine.txt', "for DEVB\n");

my $files = <<'EOF';
            access_log %%TESTDIR%%/files.log files;
EOF
$t->start_nginx($t->conf(
    http => <<'EOF',
    log_format files '$status $request_method $uri id=$mdm_enrollment_id '
                     'type=$mdm_message_type cert=$mdm_cert_sha256 '
                     'err="$mdm_error"';
EOF
    extra => <<'EOF',
        mdm_device_ca %%TESTDIR%%/ca.crt;
EOF
    locations => <<"EOF"));
        location = /mdm/checkin { mdm_checkin; }
        location = /static { return 200 "static\\n"; }
        location /mdm/assets/ {
            mdm_device_auth;
            alias %%TESTDIR%%/assets/;
$files        }
        location /mdm/mine/ {
            mdm_device_auth;
            alias %%TESTDIR%%/devices/\$mdm_enrollment_id/;
$files        }
        location /mdm/signed/ {
            mdm_device_auth;
            mdm_identity signature;
            alias %%TESTDIR%%/assets/;
$files        }
        location /mdm/cn/ {
            mdm_device_auth;
            mdm_require_id_in_cert on;
            alias %%TESTDIR%%/assets/;
$files        }
        location /mdm/nested/ {
            mdm_device_auth;
            location /mdm/nested/inner/ {
                alias %%TESTDIR%%/assets/;
$files            }
        }
    }

    # HTTP/2: the streams of one connection wait for their replies apart
    server {
        listen 127.0.0.1:%%PORT_h2%% ssl http2;
        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;
        ssl_client_certificate %%TESTDIR%%/ca.crt;
        ssl_verify_client optional;
        location /mdm/assets/ {
            mdm_device_auth;
            alias %%TESTDIR%%/assets/;
$files        }
    }

    # behind a TLS terminator that forwards the verified certificate
    server {
        listen 127.0.0.1:%%PORT_back%%;
        mdm_device_ca %%TESTDIR%%/ca.crt;
        mdm_identity header \$http_x_client_cert;
        mdm_trusted_proxy 127.0.0.1/32;
        location /mdm/assets/ {
            mdm_device_auth;
            alias %%TESTDIR%%/assets/;
$files        }
    }
    server {
        listen 127.0.0.1:%%PORT_front%% ssl;
        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;
        ssl_client_certificate %%TESTDIR%%/ca.crt;
        ssl_verify_client on;
        location / {
            proxy_pass http://127.0.0.1:%%PORT_back%%;
            proxy_set_header X-Client-Cert \$ssl_client_escaped_cert;
        }
EOF
my $redis = $t->redis;

sub get {
    my ($path, %o) = @_;
    return $t->put($path, '', method => 'GET', ct => undef, %o);
}

sub file_lines { grep { length } split /\n/, $t->slurp('files.log') }

# --- devices ---------------------------------------------------------------
$t->enroll('DEVA', 'devA');
$t->enroll('DEVB', 'devB');
$t->enroll('DEVOUT', 'devOut');
$t->enroll('DEVREV', 'devRev');
$t->enroll('cnA', 'cnA');
is $t->put('/mdm/checkin', $t->authenticate('DEVAUTH'), cert => 'devAuth')
    ->{status}, 200, 'DEVAUTH: Authenticate only';
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'CheckOut',
           Topic => $MdmTest::TOPIC, UDID => 'DEVOUT'), cert => 'devOut')
    ->{status}, 200, 'DEVOUT checked out';
is $redis->hget('mdm:{DEVOUT}:enr:DEVOUT', 'enabled'), '0', 'DEVOUT disabled';
$t->fcall('mdm_scep_revoke', [], $c{devRev}{sha256});
ok defined $redis->zscore('mdm:scep:revoked', $c{devRev}{sha256}),
    'DEVREV certificate revoked';

# --- a bound, enabled device gets the file ------------------------------------
$r = get('/mdm/assets/pkg.bin', cert => 'devA');
is $r->{status}, 200, 'enrolled device: 200';
is $r->{body}, $asset, 'the file';
ok $r->{headers}{'last-modified'} && $r->{headers}{etag},
    "nginx's caching headers";
is $r->{headers}{'accept-ranges'}, 'bytes', 'Accept-Ranges';

$r = get('/mdm/assets/pkg.bin', cert => 'devA',
         headers => { Range => 'bytes=100-109' });
is $r->{status}, 206, 'Range: 206';
is $r->{body}, substr($asset, 100, 10), 'the range';
is $r->{headers}{'content-range'}, 'bytes 100-109/10000', 'Content-Range';

$r = get('/mdm/assets/pkg.bin', cert => 'devA', method => 'HEAD');
is $r->{status}, 200, 'HEAD: 200';
is $r->{headers}{'content-length'}, 10000, 'HEAD: the length';
is $r->{body}, '', 'HEAD: no body';

$r = get('/mdm/assets/pkg.bin', cert => 'devA',
         headers => { 'If-None-Match' => $r->{headers}{etag} });
is $r->{status}, 304, 'If-None-Match: 304';

# keep-alive: the second request on the connection hashes nothing again
my $sock = $t->connect(cert => 'devA');
for my $n (1, 2) {
    $r = $t->request($sock, '/mdm/assets/pkg.bin', '', method => 'GET',
                     ct => undef, keepalive => 1);
    is $r->{status}, 200, "keep-alive request $n: 200";
}
close $sock;

$r = get('/mdm/assets/missing', cert => 'devA');
is $r->{status}, 404, 'a missing file: 404 (after the check)';

# --- $mdm_enrollment_id in the path and in the log -----------------------------
$r = get('/mdm/mine/mine.txt', cert => 'devA');
is $r->{status}, 200, 'per-device path: 200';
is $r->{body}, "for DEVA\n", 'DEVA gets its own file';
$r = get('/mdm/mine/mine.txt', cert => 'devB');
is $r->{body}, "for DEVB\n", 'DEVB gets its own file';

ok wait_until(sub { grep { m{GET /mdm/mine/mine.txt id=DEVB } } file_lines() }),
    'access log line';
my ($line) = grep { m{^200 GET /mdm/mine/mine.txt id=DEVA } } file_lines();
ok $line, '$mdm_enrollment_id in the access log';
like $line // '', qr/type=DeviceAuth cert=$c{devA}{sha256} /,
    '$mdm_message_type and $mdm_cert_sha256';

# --- other identity sources ------------------------------------------------------
$r = get('/mdm/signed/pkg.bin', cert => undef, headers => {
         'Mdm-Signature' => mdm_signature('', $c{devA}) });
is $r->{status}, 200, 'Mdm-Signature over the empty body: 200';
is $r->{body}, $asset, 'the file';
$r = get('/mdm/signed/pkg.bin', cert => undef, headers => {
         'Mdm-Signature' => mdm_signature('x', $c{devA}) });
is $r->{status}, 403, 'a signature over other content: 403';
$r = get('/mdm/signed/pkg.bin', cert => undef);
is $r->{status}, 403, 'no signature: 403';

$r = get('/mdm/assets/pkg.bin', cert => 'devA', port => 'front');
is $r->{status}, 200, 'certificate forwarded by a trusted proxy: 200';
is $r->{body}, $asset, 'the file through the proxy';
$r = get('/mdm/assets/pkg.bin', plain => 1, port => 'back',
         headers => { 'X-Client-Cert' => 'x' });
is $r->{status}, 403, 'a forwarded header that is not a certificate: 403';

# HTTP/2, five streams on one connection
sub curl {
    open my $fh, '-|', 'curl', '-sk', '--no-progress-meter', '--http2', @_
        or die "curl: $!";
    local $/;
    return <$fh> // '';
}
my $url = 'https://127.0.0.1:' . $t->port('h2') . '/mdm/assets/pkg.bin';
my @out = split /\n/, curl('-Z', '--cert', $c{devA}{cert}, '--key',
    $c{devA}{key}, '-w', '%{http_code} %{http_version} %{size_download} '
    . '%{num_connects}\n', map { ('-o', '/dev/null', $url) } 1 .. 5);
is scalar(@out), 5, 'HTTP/2: five answers';
is scalar(grep { /^200 2 10000 / } @out), 5, 'HTTP/2: each 200 with the file'
    or diag "@out";
is scalar(grep { / 1$/ } @out), 1, 'HTTP/2: over one connection';
my $h2 = curl('-w', '%{http_code}', '-o', '/dev/null', $url);
is $h2, 403, 'HTTP/2 without a certificate: 403';

$r = get('/mdm/cn/pkg.bin', cert => 'cnA');
is $r->{status}, 200, 'mdm_require_id_in_cert: the id is the CN: 200';
$r = get('/mdm/cn/pkg.bin', cert => 'devA');
is $r->{status}, 403, 'mdm_require_id_in_cert: DEVA is not CN devA: 403';

$r = get('/mdm/nested/inner/pkg.bin', cert => 'devA');
is $r->{status}, 200, 'nested location inherits: enrolled device 200';
$r = get('/mdm/nested/inner/pkg.bin', cert => 'stranger');
is $r->{status}, 403, 'nested location inherits: stranger 403';

# --- refusals: 403 or 405, one line each, nothing changed ------------------------
# a binding one way only (the device has moved on to another certificate)
my $stale = $t->device_cert('stale');
$redis->set("mdm:cert:$stale->{sha256}", 'DEVA');
my $before = $t->redis_state;
my $events = $t->events_len;
my $audit = $redis->xlen('mdm:audit');

my @refusals = (
    [ 'unknown certificate', 'stranger', 403,
      qr/certificate is not bound to a device/ ],
    [ 'checked-out device', 'devOut', 403, qr/device is not enrolled/,
      'DEVOUT' ],
    [ 'Authenticate but no TokenUpdate', 'devAuth', 403,
      qr/device is not enrolled/, 'DEVAUTH' ],
    [ 'revoked certificate', 'devRev', 403, qr/certificate is revoked/ ],
    [ 'certificate the device is no longer bound to', 'stale', 403,
      qr/not the one bound to this device/, 'DEVA' ],
    [ 'no client certificate', undef, 403, qr/no client certificate/ ],
);
for my $case (@refusals) {
    my ($name, $cert, $status, $why, $id) = @$case;
    $t->mark_log;
    $r = get('/mdm/assets/pkg.bin', cert => $cert);
    is $r->{status}, $status, "$name: $status";
    unlike $r->{body}, qr/ABCDEFGHIJ/, "$name: not the file";
    my @l = grep { /mdm: $status DeviceAuth/ } $t->mdm_errors_since_mark;
    is scalar(@l), 1, "$name: one log line";
    like $l[0] // '', $why, "$name: the reason";
    like $l[0] // '', qr/id="$id"/, "$name: names the device" if $id;
}

for my $m (qw(POST PUT DELETE)) {
    $t->mark_log;
    $r = $t->put('/mdm/assets/pkg.bin', 'data', method => $m, cert => 'devA',
                 ct => 'text/plain');
    is $r->{status}, 405, "$m: 405";
    is $r->{headers}{allow}, 'GET, HEAD', "$m: Allow: GET, HEAD";
    is scalar(grep { /mdm: 405 DeviceAuth.*not GET or HEAD/ }
              $t->mdm_errors_since_mark), 1, "$m: one log line";
}

$t->state_unchanged($before, 'refusals changed nothing in Redis');
is $t->events_len, $events, 'no events';
is $redis->xlen('mdm:audit'), $audit, 'no audit entries';
ok wait_until(sub { grep { /^403 GET .*id=DEVOUT .*err="device is not/ }
                    file_lines() }), 'a refusal in the access log';

# --- Redis slow or gone: 503 with Retry-After -------------------------------------
kill 'STOP', $t->{redis_pid};
# a client that leaves while its answer is awaited
for (1 .. 2) {
    my $s = $t->connect(cert => 'devA');
    print $s "GET /mdm/assets/pkg.bin HTTP/1.1\r\nHost: localhost\r\n\r\n";
    close $s;
}
$t->mark_log;
my $t0 = time;
$r = get('/mdm/assets/pkg.bin', cert => 'devA');
is $r->{status}, 503, 'paused Redis: 503';
ok time - $t0 >= 1.5, 'at the timeout';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
like $t->log_since_mark, qr/mdm: 503 DeviceAuth .*redis did not answer in time/,
    'logged';
$r = get('/static', cert => 'devA');
is $r->{status}, 200, 'other locations answer meanwhile';
kill 'CONT', $t->{redis_pid};
ok wait_until(sub { get('/mdm/assets/pkg.bin', cert => 'devA')->{status}
                    == 200 }), 'served again once Redis answers';

$t->stop_redis;
$t->mark_log;
$t0 = time;
$r = get('/mdm/assets/pkg.bin', cert => 'devA');
is $r->{status}, 503, 'Redis down: 503';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
ok time - $t0 < 1.5, 'without waiting for the timeout';
like $t->log_since_mark,
    qr/mdm: 503 DeviceAuth .*(redis is not available|redis connection lost)/,
    'logged';

$t->finish;
done_testing;
