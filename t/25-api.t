#!/usr/bin/perl
# The HTTP API (mdm_api), driven with curl: NanoMDM's paths and shapes
# (enqueue, push, pushcert, version) field by field as its OpenAPI document
# gives them, our additions, HTTP Basic with the key, and bad input: a clear
# status, a JSON error, one log line, nothing changed.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use JSON::PP;
use MIME::Base64;
use MdmTest;

plan skip_all => 'curl is not installed' unless qx{which curl} =~ /curl/;

my $KEY = 'test-api-key-0123456789';
my $t = MdmTest->new;
$t->spew('api.key', "$KEY\n");
my $api = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT_api%%;
        client_max_body_size 1m;
        client_body_buffer_size 1m;
        location /api/ { mdm_api; mdm_api_key file:%%TESTDIR%%/api.key; }
        location / { mdm_api; mdm_api_key file:%%TESTDIR%%/api.key; }
        location /open/ { mdm_api; mdm_api_key off; allow 127.0.0.1; }
    }
EOF
$t->start_nginx($t->conf(http => $api));
my $redis = $t->redis;
my $dir = $t->dir;
my $base = 'http://127.0.0.1:' . $t->port('api');

# curl(method, path, body, %o) -> { status, json, headers, raw }
my $nc = 0;
sub curl {
    my ($method, $path, $body, %o) = @_;
    my $n = ++$nc;
    my @cmd = ('curl', '-s', '-o', "$dir/c$n.body", '-D', "$dir/c$n.hdr",
               '-X', $method, '--max-time', '10');
    push @cmd, '-u', $o{auth} // "nanomdm:$KEY" unless $o{noauth};
    if (defined $body) {
        $t->spew("c$n.in", $body);
        push @cmd, '--data-binary', "\@$dir/c$n.in";
    }
    system(@cmd, "$base$path") == 0 or die "curl failed: @cmd";
    my $h = $t->slurp("c$n.hdr");
    my ($st) = $h =~ m{^HTTP/\S+ (\d+)};
    my $raw = $t->slurp("c$n.body");
    my $json = eval { decode_json($raw) };
    return { status => $st, json => $json, headers => $h, raw => $raw };
}

sub cmd {
    my ($uuid, $rt) = @_;
    return MdmTest::plist(CommandUUID => $uuid,
                          Command => { dict => [RequestType => $rt] });
}

$t->enroll($_, lc $_) for qw(DEV1 DEV2);

# --- version -----------------------------------------------------------------
my $r = curl('GET', '/api/version');
is $r->{status}, 200, 'GET /version';
like $r->{json}{version}, qr/library \d+/, 'version: a string';
like $r->{headers}, qr{^Content-Type: application/json}mi, 'JSON';
is curl('GET', '/version')->{status}, 200, 'location / serves NanoMDM paths';

# --- auth -----------------------------------------------------------------------
$t->mark_log;
$r = curl('GET', '/api/version', undef, noauth => 1);
is $r->{status}, 401, 'no key: 401';
like $r->{headers}, qr/^WWW-Authenticate: Basic/mi, 'WWW-Authenticate';
is $r->{json}{error}, 'missing or wrong API key', 'JSON error';
is curl('GET', '/api/version', undef, auth => 'nanomdm:wrong')->{status}, 401,
    'wrong key: 401';
is curl('GET', '/api/version', undef, auth => "admin:$KEY")->{status}, 401,
    'another user: 401';
ok $t->wait_for_log(qr/mdm: api 401 .*missing or wrong API key/, 2),
    'logged';
is curl('GET', '/open/version', undef, noauth => 1)->{status}, 200,
    'mdm_api_key off: nginx decides (allow)';

# --- enqueue (NanoMDM) ------------------------------------------------------------
my $state = $t->redis_state;
$r = curl('PUT', '/api/v1/enqueue/DEV1,DEV2', cmd('API-1', 'ProfileList'));
is $r->{status}, 200, 'PUT v1/enqueue: 200';
is $r->{json}{command_uuid}, 'API-1', 'command_uuid';
is $r->{json}{request_type}, 'ProfileList', 'request_type';
is_deeply [sort keys %{ $r->{json}{status} }], ['DEV1', 'DEV2'],
    'status: one object per id';
is $r->{json}{status}{DEV1}{push_result}, 'queued',
    'push_result: queued for the sender';
ok !exists $r->{json}{no_push}, 'no_push absent when pushing';
is_deeply [$redis->zrange('mdm:{DEV1}:q:DEV1', 0, -1)], ['API-1'], 'queued';
is $redis->sismember('mdm:push:pending', 'DEV2'), 1, 'push requested';

$r = curl('PUT', '/api/v1/enqueue/DEV1,NOPE?nopush=1', cmd('API-2', 'ProfileList'));
is $r->{status}, 207, 'an unknown id: 207';
is $r->{json}{status}{NOPE}{command_error}, 'unknown enrollment id',
    'command_error for it';
is_deeply $r->{json}{status}{DEV1}, {}, 'the known one: no error';
is $r->{json}{no_push}, JSON::PP::true, 'no_push';

$r = curl('PUT', '/api/v1/enqueue/NOPE1,NOPE2', cmd('API-3', 'ProfileList'));
is $r->{status}, 500, 'all unknown: 500 (NanoMDM: all failed)';
ok !$redis->exists('mdm:cmd:API-3'), 'nothing stored';

# our extension: ids in the body
my $ids = encode_json({ ids => ['DEV1', 'DEV2'], nopush => JSON::PP::true,
                        command => cmd('API-4', 'SecurityInfo') });
$r = curl('POST', '/api/v1/enqueue', $ids);
is $r->{status}, 200, 'POST v1/enqueue with ids in JSON';
is $r->{json}{command_uuid}, 'API-4', 'command_uuid';

# --- push ------------------------------------------------------------------------------
$redis->del('mdm:push:pending', 'mdm:push:q');
$r = curl('GET', '/api/v1/push/DEV1,DEV2');
is $r->{status}, 200, 'GET v1/push';
is $r->{json}{status}{DEV2}{push_result}, 'queued', 'push_result';
is $redis->llen('mdm:push:q'), 2, 'two push requests';
$r = curl('GET', '/api/v1/push/DEV1,NOPE');
is $r->{status}, 207, 'push with an unknown id: 207';
is $r->{json}{status}{NOPE}{push_error}, 'unknown enrollment id', 'push_error';

# --- our additions ------------------------------------------------------------
$r = curl('GET', '/api/v1/enrollments?count=10');
is $r->{status}, 200, 'GET v1/enrollments';
is_deeply [sort map { $_->{id} } @{ $r->{json}{enrollments} }], ['DEV1', 'DEV2'],
    'both listed';
$r = curl('GET', '/api/v1/enrollments/DEV1');
is $r->{json}{type}, 'Device', 'one enrollment';
like $r->{json}{unlock_token} // '(none)', qr/bytes|none/, 'secrets by size';
$r = curl('GET', '/api/v1/queue/DEV1');
is_deeply [map { $_->{uuid} } @{ $r->{json}{queue} }], ['API-1', 'API-2', 'API-4'],
    'GET v1/queue: in order';
is $r->{json}{queue}[0]{status}, 'Queued', 'with status';
$r = curl('GET', '/api/v1/commands/API-1');
is $r->{json}{targets}, 2, 'GET v1/commands: targets';
is_deeply [sort map { "$_->{id}=$_->{status}" } @{ $r->{json}{statuses} }],
    ['DEV1=Queued', 'DEV2=Queued'], 'statuses';
is curl('DELETE', '/api/v1/queue/DEV1/API-2')->{json}{canceled}, JSON::PP::true,
    'DELETE v1/queue/{id}/{uuid}';
$r = curl('GET', '/api/v1/results/DEV1/API-2');
is $r->{json}{status}, 'Canceled', 'GET v1/results';
is curl('DELETE', '/api/v1/queue/DEV2')->{json}{removed}, 2, 'DELETE v1/queue/{id}';
$r = curl('DELETE', '/api/v1/commands/API-1');
is $r->{json}{canceled}, 1, 'DELETE v1/commands/{uuid}';

# --- pushcert ---------------------------------------------------------------------
my $sub = '/UID=com.apple.mgmt.External.api-test/CN=APSP:api-test';
system("openssl req -x509 -newkey rsa:2048 -nodes -keyout $dir/pk.pem "
       . "-out $dir/pc.pem -days 30 -subj '$sub' 2>/dev/null") == 0
    or die 'openssl';
my $pem = $t->slurp('pc.pem') . $t->slurp('pk.pem');
$r = curl('PUT', '/api/v1/pushcert', $pem);
is $r->{status}, 200, 'PUT v1/pushcert';
is $r->{json}{topic}, 'com.apple.mgmt.External.api-test', 'topic (UID)';
like $r->{json}{not_after}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'not_after';
$r = curl('GET', '/api/v1/pushcert?topic=com.apple.mgmt.External.api-test');
is $r->{json}{topic}, 'com.apple.mgmt.External.api-test', 'GET v1/pushcert';
system("openssl genrsa -out $dir/other.pem 2048 2>/dev/null");

# --- bad input: status, JSON error, one line, nothing changed ------------------------
$state = $t->redis_state;
my @bad = (
    ['PUT', '/api/v1/enqueue/DEV1', 'not a plist', 400, qr/command_error|error/],
    ['PUT', '/api/v1/enqueue/DEV1', MdmTest::plist(CommandUUID => 'X'), 400,
     qr/RequestType/],
    ['PUT', '/api/v1/enqueue/', cmd('X1', 'ProfileList'), 400, qr/no enrollment ids/],
    ['POST', '/api/v1/enqueue', encode_json({ ids => [map { "I$_" } 1 .. 2001],
                                              command => cmd('X2', 'ProfileList') }),
     400, qr/too many ids/],
    ['POST', '/api/v1/enqueue', '{"ids": 5}', 400, qr/takes JSON/],
    ['POST', '/api/v1/enqueue', '[[[[[[[[', 400, qr/takes JSON/],
    ['GET', '/api/v1/nope', undef, 404, qr/unknown API path/],
    ['PATCH', '/api/v1/queue/DEV1', undef, 405, qr/not allowed/],
    ['DELETE', '/api/v1/push/DEV1', undef, 405, qr/not allowed/],
    ['GET', '/api/v1/queue/NOPE', undef, 404, qr/unknown enrollment id/],
    ['GET', '/api/v1/results/DEV1/NEVER', undef, 404, qr/no result/],
    ['PUT', '/api/v1/pushcert', 'garbage', 400, qr/no PEM certificate/],
    ['PUT', '/api/v1/pushcert', $t->slurp('pc.pem'), 400, qr/private key/],
    ['PUT', '/api/v1/pushcert', $t->slurp('pc.pem') . $t->slurp('other.pem'), 400,
     qr/does not match/],
    ['GET', '/api/v1/pushcert?topic=nope', undef, 404, qr/no push certificate/],
);
for my $b (@bad) {
    my ($m, $p, $body, $st, $re) = @$b;
    my $name = "$m " . substr($p, 0, 40);
    $t->mark_log;
    $r = curl($m, $p, $body);
    is $r->{status}, $st, "$name: $st";
    ok ref $r->{json} eq 'HASH', "$name: a JSON object" or diag $r->{raw};
    like $r->{raw}, $re, "$name: says why";
    if ($st == 405) {
        my @allow = $r->{headers} =~ /^Allow: (.*?)\r?$/mgi;
        is_deeply \@allow, ['GET, PUT, POST, DELETE'], "$name: one Allow header";
    }
    ok $t->wait_for_log(qr/mdm: api \d+ /, 2), "$name: logged";
}
$t->state_unchanged($state, 'bad input changed nothing');

$t->finish;
done_testing;
