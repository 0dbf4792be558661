#!/usr/bin/perl
# mdm-apnsd's HTTP/2 client: a few long-lived connections per topic (no
# connection churn against a server with rapid-reset protection), a GOAWAY
# refuses only the streams above its last_stream_id (those are sent again,
# the others answered once), a GOAWAY with a certificate reason stops the
# topic, PING finds a dead connection, a host name is resolved, a CONNECT
# proxy is used, nghttpd works, a TLS alert about our certificate stops the
# topic.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use POSIX qw(:sys_wait_h);
use IO::Socket::INET;
use ApnsTest;

my $t = ApnsTest->new;
my $d = $t->dir;
my $c = $t->push_cert('push1');
my $T = $c->{topic};

# start_mock with the options ApnsTest does not know
sub start_mock_x {
    my (@extra) = @_;
    $t->rules({ default => { status => 200 } }) unless -e "$d/rules.json";
    unlink "$d/mock.out";
    my $port = $t->port('apns');        # before the fork: the parent needs it too
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>', "$d/mock.out";
        open STDERR, '>>', "$d/mock.err";
        exec 'node', $ApnsTest::MOCK, '--port', $port,
            '--cert', "$d/server.crt", '--key', "$d/server.key",
            '--ca', "$d/pushca.crt", '--rules', "$d/rules.json",
            '--log', "$d/mock.jsonl", @extra or die;
    }
    $t->{mock_pid} = $pid;
    $t->wait_for(sub { $t->slurp('mock.out') =~ /listening/ }, 10)
        or die 'mock did not start: ' . $t->slurp('mock.err');
}

sub restart_mock {
    $t->stop_mock;
    truncate "$d/mock.jsonl", 0;
    start_mock_x(@_);
}

sub counts_of {
    my %n;
    $n{ $_->{token} }++ for $t->requests;
    return \%n;
}

sub all_once {
    my ($ids, $n) = @_;
    return !grep { ($n->{ $t->token_of($_) } // 0) != 1 } @$ids;
}

sub all_pushed {
    my $n = counts_of();
    return !grep { !$n->{ $t->token_of($_) } } @_;
}

sub drained {
    my $r = $t->redis;
    return $r->llen('mdm:push:q') == 0 && $r->llen('mdm:push:proc:a1') == 0;
}

# ---- 5,000 pushes: the connections last ------------------------------------------
start_mock_x();
my $a = $t->start_apnsd(cert => [$c->{pem}]);
my @ids = map { sprintf 'MANY%05d', $_ } 1 .. 5000;
$t->enroll_many($T, @ids);
$t->produce_many(@ids);
ok $t->wait_for(sub { all_pushed(@ids) }, 90, 'all 5000 pushed'), '5000 pushes sent';
ok $t->wait_for(\&drained, 20), '... and recorded';
my $n = counts_of();
is scalar(grep { $n->{ $t->token_of($_) } > 1 } @ids), 0, 'no device pushed twice';
my @sess = $t->sessions;
ok @sess <= 2, 'at most --connections (2) connections for 5000 pushes (' . scalar(@sess) . ')';
is scalar($t->mock_log('goaway-received')) + scalar($t->mock_log('session-error')), 0,
    'no GOAWAY or session error at the server (no reset flood)';
is $t->stats->{ok}, 5000, 'stats: 5000 ok';
is $t->stats->{retry} // 0, 0, 'nothing retried';
my $max = 0;
for ($t->requests) { $max = $_->{active} if $_->{active} > $max }
ok $max > 10, "streams multiplexed ($max at once)";
is $t->stop_apnsd($a), 0, 'stopped';

# ---- GOAWAY with last_stream_id in the middle of a run ---------------------------
restart_mock('--goaway-after', 700, '--goaway-sessions', 1, '--delay', 20);
$t->redis->del('mdm:push:stats');
$a = $t->start_apnsd(cert => [$c->{pem}]);
@ids = map { sprintf 'GOAW%05d', $_ } 1 .. 3000;
$t->enroll_many($T, @ids);
$t->produce_many(@ids);
ok $t->wait_for(sub { all_pushed(@ids) }, 90, 'all 3000 pushed'), '3000 pushes around a GOAWAY';
ok $t->wait_for(\&drained, 20), '... and recorded';
my ($ga) = $t->mock_log('goaway-sent');
ok $ga && $ga->{last} > 0, "the mock sent GOAWAY, last_stream_id $ga->{last}";
my @refused = $t->mock_log('refused');
ok @refused >= 1, scalar(@refused) . ' streams above last_stream_id refused';
ok !(grep { $_->{stream} <= $ga->{last} } @refused), '... only those above it';
$n = counts_of();
ok all_once(\@ids, $n), 'every device pushed exactly once (processed streams not retried)';
my %first = map { $_->{token} => $_->{conn} } grep { $_->{conn} == $ga->{conn} } $t->requests;
ok !(grep { $first{ $_->{token} } } @refused), 'refused streams were not processed by the old connection';
ok !(grep { !$n->{ $_->{token} } } @refused), '... and were sent again on a new one';
my @late = grep { $_->{conn} == $ga->{conn} && $_->{stream} <= $ga->{last} } $t->requests;
ok @late > 0, scalar(@late) . ' streams up to last_stream_id answered on the old connection';
ok !(grep { !$t->enr($_)->{push_ms} } @ids), 'every outcome recorded';
is $t->stats->{ok}, 3000, 'stats: 3000 ok';
is $t->stats->{retry} // 0, 0, 'no retries: refused streams are resent at once';
@sess = $t->sessions;
ok @sess <= 3, 'the GOAWAY cost one connection (' . scalar(@sess) . ' in all)';
like $t->apnsd_log, qr/GOAWAY from 127\.0\.0\.1 \(last stream $ga->{last}, NO_ERROR\): \d+ streams in flight are answered on it, \d+ newer ones sent again/,
    'the GOAWAY is logged';
is $t->stop_apnsd($a), 0, 'stopped';

# ---- a GOAWAY with a certificate reason stops the topic --------------------------
restart_mock('--goaway-after', 5, '--goaway-reason', 'BadCertificate',
             '--goaway-sessions', 1, '--delay', 50);
$a = $t->start_apnsd(cert => [$c->{pem}], opts => { 'stopped-retry' => 0 });
@ids = map { sprintf 'GBAD%03d', $_ } 1 .. 50;
$t->enroll_many($T, @ids);
$t->produce_many(@ids);
ok $t->wait_for(sub { $t->apnsd_log =~ /\[crit\] topic \Q$T\E STOPPED: .*\(BadCertificate\)/ }, 10),
    'GOAWAY {"reason":"BadCertificate"} stops the topic';
ok $t->wait_for(sub { $t->llen('mdm:push:proc:a1') > 0 }, 5), 'its pushes are held';
ok !all_pushed(@ids), '... not sent';
kill 'HUP', $a;
ok $t->wait_for(sub { all_pushed(@ids) && drained() }, 20), 'after SIGHUP everything is delivered';
is $t->stop_apnsd($a), 0, 'stopped';

# ---- PING: a server that stops answering is noticed ------------------------------
restart_mock();
$a = $t->start_apnsd(cert => [$c->{pem}], env => { APNSD_PING_MS => 300 },
                     opts => { 'request-timeout' => '60s' });
@ids = map { sprintf 'PING%03d', $_ } 1 .. 20;
$t->enroll_many($T, @ids);
$t->produce_many(@ids[0 .. 9]);
ok $t->wait_for(sub { all_pushed(@ids[0 .. 9]) }, 10), 'pushed on a first connection';
kill 'STOP', $t->{mock_pid};
ok $t->wait_for(sub { $t->apnsd_log =~ /connection \d+ closed: no answer to a PING/ }, 5),
    'an unresponsive connection is closed after an unanswered PING';
kill 'CONT', $t->{mock_pid};
$t->produce_many(@ids[10 .. 19]);
ok $t->wait_for(sub { all_pushed(@ids) }, 15), 'later pushes go out on a new connection';
ok scalar($t->sessions) >= 2, 'reconnected';
is $t->stop_apnsd($a), 0, 'stopped';

# ---- a host name: looked up without blocking the loop (getaddrinfo_a) ------------
$a = $t->start_apnsd(cert => [$c->{pem}],
                     opts => { apns => 'https://localhost:' . $t->port('apns') });
$t->enroll('BYNAME', topic => $T);
$t->produce('BYNAME');
ok $t->wait_for(sub { $t->enr('BYNAME')->{push_ms} }, 10),
    'pushed to https://localhost:PORT (name resolved, certificate name checked)';
is $t->stop_apnsd($a), 0, 'stopped';

# ---- CONNECT proxy --------------------------------------------------------------
my $pport = $t->port('proxy');     # (before the fork)
$t->spew('proxy.js', <<'JS');
const http = require('http'), net = require('net'), fs = require('fs');
const log = process.argv[3];
http.createServer().on('connect', (req, sock, head) => {
  fs.appendFileSync(log, req.url + ' ' + (req.headers['proxy-authorization'] || '-') + '\n');
  const [h, p] = req.url.split(':');
  const up = net.connect(Number(p), h, () => {
    sock.write('HTTP/1.1 200 Connection established\r\n\r\n');
    if (head.length) up.write(head);
    up.pipe(sock); sock.pipe(up);
  });
  up.on('error', () => sock.destroy()); sock.on('error', () => up.destroy());
}).listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'));
JS
my $ppid = fork // die;
if (!$ppid) {
    open STDOUT, '>', "$d/proxy.out";
    exec 'node', "$d/proxy.js", $pport, "$d/proxy.log" or die;
}
ok $t->wait_for(sub { $t->slurp('proxy.out') =~ /listening/ }, 10), 'proxy started';
$a = $t->start_apnsd(cert => [$c->{pem}],
                     opts => { proxy => "http://u1:p%20w\@127.0.0.1:$pport" });
$t->enroll('PROXIED', topic => $T);
$t->produce('PROXIED');
ok $t->wait_for(sub { $t->enr('PROXIED')->{push_ms} }, 10), 'pushed through the proxy';
like $t->slurp('proxy.log'), qr/^127\.0\.0\.1:\d+ Basic dTE6cCUyMHc=$/m,
    'CONNECT to APNs with the proxy credentials';
is $t->stop_apnsd($a), 0, 'stopped';
kill 'TERM', $ppid;
waitpid $ppid, 0;

# ---- nghttpd: another HTTP/2 server; a server refusing our certificate in TLS ----
SKIP: {
    my ($ng) = grep { -x $_ } map { "$_/nghttpd" } split(/:/, $ENV{PATH}), '/usr/sbin';
    skip 'nghttpd (Debian nghttp2-server) not installed', 5 unless $ng;
    $t->stop_mock;
    my $port = $t->port('apns');
    my @ng = map { sprintf 'NGHD%03d', $_ } 1 .. 200;
    mkdir "$d/htdocs";
    mkdir "$d/htdocs/3";
    mkdir "$d/htdocs/3/device";
    $t->spew("htdocs/3/device/" . $t->token_of($_), '') for @ng, 'NGREJ';
    my $start_ng = sub {
        my @opt = @_;
        my $pid = fork // die;
        if (!$pid) {
            open STDOUT, '>', "$d/nghttpd.out";
            open STDERR, '>&', \*STDOUT;
            exec $ng, @opt, '-d', "$d/htdocs", '-a', '127.0.0.1', $port,
                "$d/server.key", "$d/server.crt" or die;
        }
        $t->wait_for(sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") }, 10);
        return $pid;
    };
    my $ngpid = $start_ng->('-m', 7);
    $a = $t->start_apnsd(name => 'ng', cert => [$c->{pem}]);
    $t->enroll_many($T, @ng);
    $t->produce_many(@ng);
    ok $t->wait_for(sub { !(grep { !$t->enr($_)->{push_ms} } @ng) }, 30),
        'nghttpd (7 streams per connection): 200 pushes answered';
    is $t->stop_apnsd($a), 0, 'stopped';
    kill 'TERM', $ngpid;
    waitpid $ngpid, 0;

    # a TLS server that checks client certificates against another CA
    $ngpid = fork // die;
    if (!$ngpid) {
        open STDOUT, '>', "$d/s_server.out";
        open STDERR, '>&', \*STDOUT;
        open STDIN, '<', '/dev/null';
        exec 'openssl', 's_server', '-quiet', '-accept', "127.0.0.1:$port",
            '-cert', "$d/server.crt", '-key', "$d/server.key", '-alpn', 'h2',
            '-Verify', '2', '-CAfile', "$d/rogueca.crt", '-verify_return_error' or die;
    }
    $t->wait_for(sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") }, 10);
    $a = $t->start_apnsd(name => 'ngrej', cert => [$c->{pem}], opts => { 'stopped-retry' => 0 });
    $t->enroll('NGREJ', topic => $T);
    $t->produce('NGREJ');
    ok $t->wait_for(sub { $t->apnsd_log('ngrej') =~ /\[crit\] topic \Q$T\E STOPPED: .*\(TLS: .*alert/ }, 10),
        'a TLS alert about our certificate stops the topic';
    is $t->enr('NGREJ')->{push_error} =~ /^TLS: / ? 1 : 0, 1, '... push_error says TLS';
    is $t->stop_apnsd($a), 0, 'stopped';
    kill 'TERM', $ngpid;
    waitpid $ngpid, 0;
}

$t->finish_apnsd(allow => qr/STOPPED|still STOPPED/);
$t->finish;
done_testing;
