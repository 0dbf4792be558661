#!/usr/bin/perl
# mdm-apnsd: command line, the exact request APNs gets, outcome write-back,
# coalescing, multiplexing, graceful shutdown.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use ApnsTest;

my $t = ApnsTest->new;
my $bin = $t->bin;
my $d = $t->dir;

# ---- command line --------------------------------------------------------------
my $help = qx{$bin --help 2>&1};
is $?, 0, '--help exits 0';
like $help, qr/^NAME\n.*^SYNOPSIS\n.*^DESCRIPTION\n.*^OPTIONS\n.*^ENVIRONMENT\n.*^SIGNALS\n.*^EXIT STATUS\n/ms,
    '--help is a manual page';
like $help, qr/--cert CERT\[:KEY\]/, '--help documents --cert';
my $out = qx{$bin --check -c $FindBin::Bin/../apnsd/mdm-apnsd.conf.example --redis unix:/nonexistent 2>&1};
isnt $? >> 8, 2, 'the example configuration file parses';
unlike $out, qr/unknown option|bad value/, '... every option in it is known';
like qx{$bin --version}, qr/^mdm-apnsd \d+\.\d+/, '--version';

$out = qx{$bin --no-such-option 2>&1};
is $? >> 8, 2, 'unknown option: exit 2';
like $out, qr/unknown option "--no-such-option"/, '... with a clear message';
$out = qx{$bin --redis unix:/x 2>&1};
is $? >> 8, 2, 'no certificate: exit 2';
like $out, qr/no push certificate/, '... says so';
$out = qx{$bin --cert /x --priority 7 2>&1};
is $? >> 8, 2, 'bad priority: exit 2';
$out = qx{$bin --cert /x --retry-base 5parsecs 2>&1};
like $out, qr/retry-base: bad value/, 'bad duration is reported';
$t->spew('bad.conf', "redis unix:/x\nbogus 1\n");
$out = qx{$bin -c $d/bad.conf --cert /x 2>&1};
like $out, qr{bad\.conf:2: unknown option "bogus"}, 'config file errors name file and line';

my $c1 = $t->push_cert('push1');
my $T1 = $c1->{topic};
$out = qx{MDM_APNSD_REDIS=unix:$d/redis.sock $bin --check --cert $c1->{pem} --apns development 2>&1};
is $?, 0, '--check passes with a good certificate and Redis';
like $out, qr/^topic \Q$T1\E  certificate \Q$c1->{pem}\E/m, '--check prints the topic from the UID';
like $out, qr/^apns https:\/\/api\.sandbox\.push\.apple\.com$/m, 'development host';
like $out, qr/^redis unix:\Q$d\E\/redis\.sock: ok/m, 'environment sets the Redis address';

# a certificate without UID is not a push certificate
$t->run_cmd("openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    . " -keyout $d/nouid.key -subj /CN=nouid -days 3 -out $d/nouid.crt");
$out = qx{$bin --check --redis unix:$d/redis.sock --cert $d/nouid.crt:$d/nouid.key 2>&1};
isnt $?, 0, '--check fails without a usable certificate';
like $out, qr/has no UID/, '... and says the UID is missing';

# ---- happy path: exact request, write-back, coalescing -----------------------------
$t->start_mock;
my $e = $t->enroll('DEV-1', topic => $T1, magic => 'F4C1C4E0-6B6B-4C68-9E3A-AAF0F5E5D5B1');
$t->produce('DEV-1') for 1 .. 10;
is $t->llen('mdm:push:q'), 1, 'ten producer calls for one device queue one push';

my $a1 = $t->start_apnsd(cert => [$c1->{pem}]);
ok $t->wait_for(sub { $t->enr('DEV-1')->{push_ms} }, 10, 'push_ms'), 'push recorded';
sleep 0.3;
my @req = $t->requests;
is scalar @req, 1, 'exactly one push for the ten calls';
my $r = $req[0];
is $r->{method}, 'POST', 'POST';
is $r->{path}, "/3/device/$e->{token}", 'path /3/device/<hex token>';
is $r->{body}, '{"mdm":"F4C1C4E0-6B6B-4C68-9E3A-AAF0F5E5D5B1"}', 'body is exactly {"mdm":"<PushMagic>"}';
is $r->{headers}{'apns-push-type'}, 'mdm', 'apns-push-type: mdm';
is $r->{headers}{'apns-topic'}, $T1, 'apns-topic';
is $r->{headers}{'apns-priority'}, '10', 'apns-priority 10 by default';
my $exp = $r->{headers}{'apns-expiration'};
ok abs($exp - (time + 7 * 86400)) < 120, "apns-expiration = now + 7 days ($exp)";
is $r->{headers}{'content-type'}, 'application/json', 'content-type';
ok !exists $r->{headers}{'apns-collapse-id'}, 'no collapse id';
is $r->{uid}, $T1, 'client certificate of the topic presented';
my $enr = $t->enr('DEV-1');
is $enr->{push_id}, $r->{apns_id}, 'push_id = apns-id from APNs';
ok abs($enr->{push_ms} - time * 1000) < 10_000, 'push_ms is now';
is $enr->{push_error}, '', 'push_error empty after success';
my @ev = $t->events(type => 'push', id => 'DEV-1');
is scalar @ev, 1, 'one event';
is $ev[0]{result}, 'ok', 'event result ok';
is $ev[0]{apns_id}, $r->{apns_id}, 'event carries the apns-id';
is $ev[0]{topic}, $T1, 'event carries the topic';
is $t->llen('mdm:push:proc:a1'), 0, 'processing list empty';
is $t->redis->scard('mdm:push:pending'), 0, 'pending set empty';
ok $t->redis->get('mdm:push:alive:a1'), 'heartbeat present';
ok $t->redis->sismember('mdm:push:senders', 'a1'), 'sender registered';
my $st = $t->stats;
is $st->{ok}, 1, 'stats: ok 1';
is $st->{sent}, 1, 'stats: sent 1';
is $st->{queue}, 0, 'stats: queue depth 0';

# skipped enrollments are finished without a request
$t->enroll('DEV-OFF', topic => $T1, enabled => 0);
$t->enroll('DEV-NOTOKEN', topic => $T1, token => '');
$t->produce('DEV-OFF', 'DEV-MISSING', 'DEV-NOTOKEN');
ok $t->wait_for(sub { $t->events(result => 'skipped') == 3 }, 10), 'three skips recorded';
is_deeply [sort map { "$_->{id}=$_->{reason}" } $t->events(result => 'skipped')],
    ['DEV-MISSING=missing', 'DEV-NOTOKEN=no_token', 'DEV-OFF=disabled'], 'skip reasons';
is scalar $t->requests, 1, 'no request for skipped enrollments';
ok !$t->redis->exists('mdm:{DEV-MISSING}:enr:DEV-MISSING'), 'missing enrollment not created';
is $t->llen('mdm:push:proc:a1'), 0, 'skipped items finished';

# user channel ids: the hash tag is the device part
$t->enroll('DEV-1:USER-9', topic => $T1);
$t->produce('DEV-1:USER-9');
ok $t->wait_for(sub { $t->enr('DEV-1:USER-9')->{push_ms} }, 10), 'user channel pushed';
is((grep { $_->{body} eq '{"mdm":"PM-DEV-1:USER-9"}' } $t->requests), 1,
   'user channel PushMagic used');

# an enqueue while the push is in flight produces exactly one more push
$t->enroll('DEV-SLOW', topic => $T1);
my $slow = $t->token_of('DEV-SLOW');
$t->rules({ default => { status => 200 }, tokens => { $slow => { status => 200, delay => 800 } } });
$t->produce('DEV-SLOW');
ok $t->wait_for(sub { $t->token_counts->{$slow} }, 10), 'slow push in flight';
$t->produce('DEV-SLOW') for 1 .. 10;
ok $t->wait_for(sub { ($t->token_counts->{$slow} // 0) >= 2 }, 10), 'second push after the first';
ok $t->wait_for(sub { $t->llen('mdm:push:proc:a1') == 0 && $t->llen('mdm:push:q') == 0 }, 10),
    'queue drained';
sleep 1;
is $t->token_counts->{$slow}, 2, 'eleven enqueues around an in-flight push: two pushes';

# ---- multiplexing: many pushes, few connections -------------------------------------
$t->rules({ default => { status => 200, delay => 50 } });
my @ids = map { sprintf 'BULK%04d', $_ } 1 .. 400;
$t->enroll_many($T1, @ids);
my $sess0 = scalar $t->sessions;
$t->produce_many(@ids);
ok $t->wait_for(sub { my $n = $t->token_counts; !grep { !$n->{ $t->token_of($_) } } @ids }, 30),
    'all 400 pushed';
my @bulk = grep { ($_->{path} // '') =~ /device/ } ($t->requests)[-400 .. -1];
my $max_active = 0;
for (@bulk) { $max_active = $_->{active} if $_->{active} > $max_active }
ok $max_active > 10, "requests multiplexed (up to $max_active streams at once on a connection)";
my $sessions = scalar $t->sessions;
ok $sessions <= 2, "at most --connections (2) connections for the topic ($sessions)";
ok $t->wait_for(sub { $t->stats->{ok} >= 403 }, 10), 'stats count them';

# ---- the server's SETTINGS_MAX_CONCURRENT_STREAMS is honoured ----------------------------
is $t->stop_apnsd($a1), 0, 'stopped';
$t->stop_mock;
truncate "$d/mock.jsonl", 0;
$t->start_mock(max_streams => 5, delay => 30);
$a1 = $t->start_apnsd(cert => [$c1->{pem}], opts => { connections => 1 });
my @few = map { sprintf 'FEW%03d', $_ } 1 .. 100;
$t->enroll_many($T1, @few);
$t->produce_many(@few);
ok $t->wait_for(sub { my $n = $t->token_counts; !grep { !$n->{ $t->token_of($_) } } @few }, 30),
    'all 100 pushed through a server allowing 5 streams';
$max_active = 0;
for ($t->requests) { $max_active = $_->{active} if $_->{active} > $max_active }
ok $max_active <= 5, "never more than 5 streams at once ($max_active)";
is scalar($t->sessions), 1, 'on one connection (--connections 1)';
ok !(grep { $_->{status} != 200 } $t->requests), 'no refused streams';

# ---- stats line, SIGUSR1 ------------------------------------------------------------
kill 'USR1', $a1;
ok $t->wait_for(sub { $t->apnsd_log =~ /\[info\] stats sent=\d+ ok=\d+ .*queue=0/ }, 5),
    'SIGUSR1 writes a stats line';
ok $t->wait_for(sub { defined $t->redis->hget('mdm:push:stats', 'inflight:a1') }, 5),
    'in-flight gauge in mdm:push:stats';
ok $t->wait_for(sub { defined $t->redis->hget('mdm:push:stats', 'queue') }, 5),
    'queue depth in mdm:push:stats';

# ---- configured priority and expiration, environment override -----------------------
is $t->stop_apnsd($a1), 0, 'SIGTERM: exit 0';
ok !$t->redis->exists('mdm:push:alive:a1'), 'heartbeat removed on shutdown';
ok !$t->redis->sismember('mdm:push:senders', 'a1'), 'sender unregistered on shutdown';
like $t->apnsd_log, qr/\[notice\] stopped \(sent=/, 'shutdown logged';

$a1 = $t->start_apnsd(cert => [$c1->{pem}], opts => { priority => 5, expiration => 3600 },
                      env => { MDM_APNSD_PRIORITY => 1 });
$t->enroll('DEV-P', topic => $T1);
$t->produce('DEV-P');
ok $t->wait_for(sub { $t->enr('DEV-P')->{push_ms} }, 10), 'pushed with other settings';
($r) = grep { $_->{token} eq $t->token_of('DEV-P') } $t->requests;
is $r->{headers}{'apns-priority'}, '1', 'environment overrides the config file';
ok abs($r->{headers}{'apns-expiration'} - (time + 3600)) < 60, 'expiration configurable';

# ---- the sweep on a timer: an expired command on a device that never polls ----------
is $t->stop_apnsd($a1), 0, 'stopped for the sweep run';
$t->enroll('DEV-GONE', topic => $T1);
my $cmd = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>"
    . "<key>CommandUUID</key><string>SWEEP-1</string><key>Command</key><dict>"
    . "<key>RequestType</key><string>ProfileList</string></dict></dict></plist>\n";
$t->redis->fcall('mdm_enqueue', 0, $cmd, 5, 1, 1, 'DEV-GONE');
$a1 = $t->start_apnsd(cert => [$c1->{pem}], opts => { 'sweep-interval' => '200ms' });
ok $t->wait_for(sub { ($t->redis->hget('mdm:{DEV-GONE}:res:DEV-GONE:SWEEP-1', 'status')
                       // '') eq 'Expired' }, 10),
    '--sweep-interval: the item expired without a poll';
ok !$t->redis->exists('mdm:cmd:SWEEP-1'), 'its body released';
is $t->redis->zcard('mdm:{DEV-GONE}:q:DEV-GONE'), 0, 'the queue is empty';
ok $t->wait_for(sub { $t->apnsd_log =~ /sweep: 1 queued commands expired, 1 commands released/ }, 5),
    'logged';

# ---- a certificate uploaded through the HTTP API (PUT v1/pushcert) ------------------
# The module checks it and calls mdm_api with its topic and notAfter; the sender
# loads it from Redis on its cert-check timer, no restart.
my $up = $t->push_cert('uploaded');
my $ra = $t->redis->fcall('mdm_api', 0, 'PUT', 'v1/pushcert', '', $t->slurp($up->{pem}),
                          $up->{topic}, '2030-01-01T00:00:00Z');
is $ra->[0], 200, 'mdm_api PUT v1/pushcert stored it';
ok $t->wait_for(sub { $t->apnsd_log =~ /topic \Q$up->{topic}\E: certificate redis:mdm:pushcert:\S+ loaded/ }, 10),
    'the sender loaded it without a restart';
$t->enroll('DEV-UP', topic => $up->{topic});
$t->produce('DEV-UP');
ok $t->wait_for(sub { $t->enr('DEV-UP')->{push_ms} }, 10), 'and pushes with it';
# a new upload for the topic replaces it; a broken one is refused, once
$t->redis->hset("mdm:pushcert:$up->{topic}", 'pem', 'garbage', 'ms', 1);
ok $t->wait_for(sub { $t->apnsd_log =~ /certificate redis:mdm:pushcert:\S+: no PEM certificate/ }, 10),
    'a broken upload: one error line';
$t->redis->hset('mdm:{DEV-UP}:enr:DEV-UP', 'push_ms', 0);
$t->produce('DEV-UP');
ok $t->wait_for(sub { $t->enr('DEV-UP')->{push_ms} }, 10),
    'the topic keeps its loaded certificate';

$t->finish_apnsd;
$t->finish;
done_testing;
