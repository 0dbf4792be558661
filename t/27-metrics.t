#!/usr/bin/perl
# mdm_metrics: the Prometheus text of device requests, refusals, Redis round
# trips and reconnects (shared memory, summed over the workers), and the
# cached gauges of redis-scripts/metrics.lua.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(sleep time);
use MdmTest;

$SIG{PIPE} = 'IGNORE';

my $t = MdmTest->new;
my $d = $t->dir;

# a second Redis, for a server (a tenant) of its own
my $sock_b = "$d/redis-b.sock";
my $pid_b = fork // die;
if (!$pid_b) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', '0', '--unixsocket', $sock_b,
        '--unixsocketperm', '777', '--dir', $d, '--dbfilename', 'b.rdb',
        '--save', '', '--appendonly', 'no', '--logfile', "$d/redis-b.log"
        or die;
}
push @{ $t->{procs} }, $pid_b;
ok wait_until(sub { -S $sock_b && qx{redis-cli -s $sock_b PING} =~ /PONG/ }),
    'second redis up';
for my $f (sort glob(MdmTest::root() . '/redis-scripts/*.lua')) {
    my $out = qx{redis-cli -s $sock_b -x FUNCTION LOAD REPLACE < $f 2>&1};
    die "FUNCTION LOAD $f: $out" if $out =~ /ERR/;
}
# 3,000 enrollments: the census takes several slices (ZSCAN about 250)
{
    open my $p, '|-', "redis-cli -s $sock_b --pipe >/dev/null" or die;
    for my $i (1 .. 3000) {
        my ($id, $type, $en) = $i <= 2000 ? ("B$i", 'Device', 1)
                             : $i <= 2500 ? ("B1:U$i", 'User', 0)
                             : ("B$i", undef, undef);
        my @c = (['ZADD', 'mdm:enrollments', $i, $id]);
        my ($dv) = $id =~ /^([^:]+)/;
        push @c, ['HSET', "mdm:{$dv}:enr:$id", 'type', $type, 'enabled', $en]
            if $type;
        print $p join '', '*' . @$_ . "\r\n",
            map { '$' . length($_) . "\r\n$_\r\n" } @$_ for @c;
    }
    close $p;
}

my $conf = $t->conf(
    http => q{log_format pids '$pid $status'; }
          . q{access_log %%TESTDIR%%/pids.log pids;} . <<'EOF',
    server {
        listen 127.0.0.1:%%PORT_b%% ssl;
        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;
        mdm_redis unix:%%TESTDIR%%/redis-b.sock;
        location = /metrics { mdm_metrics; mdm_metrics_cache 0; }
    }
EOF
    locations => <<'EOF');
        location = /mdm/checkin { mdm_checkin; }
        location = /mdm/connect { mdm_command; }
        location = /small/checkin { mdm_max_body checkin=1k; mdm_checkin; }
        location = /metrics { mdm_metrics; mdm_metrics_cache 2s; }
        location = /metrics0 { mdm_metrics; mdm_metrics_cache 0; }
EOF
# one listening socket per worker: the kernel spreads connections over both
$conf =~ s/(listen \S+%%PORT_https%% ssl);/$1 reuseport;/;
$t->start_nginx($conf, workers => 2);
my $redis = $t->redis;

# name{labels} => value, and the raw text
sub scrape {
    my ($path, %o) = @_;
    my $r = $t->put($path // '/metrics', undef, method => 'GET', ct => undef,
                    %o);
    my %m;
    for (split /\n/, $r->{body} // '') {
        next if /^#/;
        $m{$1} = $2 if /^(\S+) (\S+)$/;
    }
    return wantarray ? (\%m, $r) : \%m;
}

sub req { my ($m, $k) = @_; $m->{"mdm_requests_total{$k}"} // 0 }

# --- the location -------------------------------------------------------
my ($m, $r) = scrape();
is $r->{status}, 200, 'GET /metrics: 200';
is $r->{headers}{'content-type'}, 'text/plain; version=0.0.4',
    'Prometheus text format 0.0.4';
like $r->{body}, qr/^# TYPE mdm_requests_total counter$/m, 'TYPE lines';
is $m->{'mdm_redis_round_trip_seconds_count'}, 0, 'no round trips yet';

for my $method (qw(PUT POST DELETE)) {
    $r = $t->put('/metrics', 'x', method => $method);
    is $r->{status}, 405, "$method /metrics: 405";
}
is $r->{headers}{allow}, 'GET, HEAD', 'Allow: GET, HEAD';
$r = $t->put('/metrics', undef, method => 'HEAD', ct => undef);
is $r->{status}, 200, 'HEAD /metrics: 200';

# --- counters move with requests, summed over both workers ------------------
my $n = 40;
$t->enroll("UDID-$_", "dev$_") for 1 .. $n;
for (1 .. $n) {
    $r = $t->put('/mdm/connect', MdmTest::plist(UDID => "UDID-$_",
                 Status => 'Idle'), cert => "dev$_");
    die "Idle: $r->{status}" unless $r->{status} == 200;
}

my %pids;
for ($t->slurp('pids.log') =~ /^(\d+) 200$/mg) { $pids{$_}++ }
is scalar(keys %pids), 2, 'both workers served device requests ('
    . join(', ', values %pids) . ')';

# every scrape, whichever worker answers it, sees the same sums
my @seen;
for (1 .. 6) {
    $m = scrape();
    push @seen, join ' ', map { req($m, $_) }
        'type="Authenticate",code="200"', 'type="TokenUpdate",code="200"',
        'type="Report",status="Idle",code="200"';
}
is_deeply [ @seen ], [ ("$n $n $n") x 6 ],
    "Authenticate, TokenUpdate, Idle: $n each in every scrape";

# --- refusals by class ------------------------------------------------------
$r = $t->put('/mdm/checkin', 'not a plist', cert => 'dev1');
is $r->{status}, 400, 'a bad body: 400';
$r = $t->put('/mdm/checkin', $t->authenticate('UDID-1'), cert => 'other');
is $r->{status}, 403, 'another certificate: 403';
$r = $t->put('/mdm/checkin', '', method => 'GET');
is $r->{status}, 405, 'GET on the check-in: 405';
$r = $t->put('/small/checkin', 'x' x 2000, cert => 'dev1');
is $r->{status}, 413, 'over mdm_max_body: 413';
$r = $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'GetToken',
             UDID => 'UDID-1', TokenServiceType => 'x'), cert => 'dev1');
is $r->{status}, 400, 'GetToken: 400, not configured';

$m = scrape();
is $m->{'mdm_refusals_total{reason="bad_input"}'}, 1, 'refusals: bad_input';
is $m->{'mdm_refusals_total{reason="identity"}'}, 1, 'refusals: identity';
is $m->{'mdm_refusals_total{reason="method"}'}, 1, 'refusals: method';
is $m->{'mdm_refusals_total{reason="too_large"}'}, 1, 'refusals: too_large';
is $m->{'mdm_refusals_total{reason="not_configured"}'}, 1,
    'refusals: not_configured';
is $m->{'mdm_refusals_total{reason="unavailable"}'}, 0,
    'refusals: unavailable 0';
is req($m, 'type="CheckIn",code="400"'), 1, 'requests: CheckIn 400';
is req($m, 'type="Authenticate",code="403"'), 1, 'requests: Authenticate 403';
is req($m, 'type="other",code="405"'), 1, 'requests: the 405';
is req($m, 'type="GetToken",code="400"'), 1, 'requests: GetToken 400';

# --- the histogram ----------------------------------------------------------
my @b = map { $m->{"mdm_redis_round_trip_seconds_bucket{le=\"$_\"}"} }
    qw(0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 +Inf);
ok !(grep { !defined } @b), 'eleven buckets';
ok !(grep { $b[$_] < $b[$_ - 1] } 1 .. $#b), 'cumulative';
my $count = $m->{'mdm_redis_round_trip_seconds_count'};
is $b[-1], $count, '+Inf bucket == _count';
# 3 FCALLs per device (Authenticate, TokenUpdate, Idle), the 403, and the
# gauge refreshes of the scrapes
cmp_ok $count, '>=', 3 * $n + 1, "_count $count >= the FCALLs sent";
my $sum = $m->{'mdm_redis_round_trip_seconds_sum'};
ok $sum > 0 && $sum / $count < 0.25, "mean round trip "
    . sprintf('%.3f ms', 1000 * $sum / $count);

# --- the Redis gauges -------------------------------------------------------
# the first scrape asked; what it answered may predate the requests above
ok wait_until(sub {
        $m = scrape();
        ($m->{mdm_enrollments} // -1) == $n
            && $m->{'mdm_stream_length{stream="audit"}'}
               == $redis->xlen('mdm:audit');
    }, 6), 'the gauges appear once a refresh came back';
is $m->{mdm_redis_up}, 1, 'mdm_redis_up 1';
is $m->{mdm_enrollments}, $n, "mdm_enrollments $n";
is $m->{'mdm_stream_length{stream="events"}'}, $redis->xlen('mdm:events'),
    'events stream length';
is $m->{'mdm_stream_length{stream="audit"}'}, $redis->xlen('mdm:audit'),
    'audit stream length';
is $m->{mdm_commands}, 0, 'no commands';
is $m->{mdm_queued_commands}, 0, 'nothing queued';

ok wait_until(sub { (scrape('/metrics', port => 'b')->{mdm_enrollments} // 0)
                    == 3000 }, 5), "a server with its own Redis: its gauges";
is scrape()->{mdm_enrollments}, $n, '... and this one its own';

# the census: one slice per refresh, published when the pass is complete
sub census {
    my ($m) = @_;
    return join ' ', map { $m->{"mdm_enrollments_by_type{$_}"} // '-' }
        'type="Device",enabled="1"', 'type="User",enabled="0"',
        'type="other",enabled="0"', 'type="Device",enabled="0"';
}
is census(scrape()), "$n 0 0 0", "census: $n Device enabled (one slice)";
my @census;
ok wait_until(sub { push @census, census(scrape('/metrics', port => 'b'));
                    $census[-1] eq '2000 500 500 0' }, 10),
    'census of 3,000 enrollments: 2000 Device enabled, 500 User disabled, '
    . '500 without a hash';
ok !(grep { $_ ne '-' && $_ ne '- - - -' && $_ ne '2000 500 500 0' }
     @census), 'never a partial pass (' . scalar(@census) . ' scrapes)';

# cached: many scrapes, at most one mdm_metrics call per mdm_metrics_cache
$redis->hset('mdm:push:stats', sent => 7, ok => 5, failed => 2,
             'inflight:host-1' => 3, 'failed:BadTopic' => 2);
my $plist = MdmTest::plist(CommandUUID => 'M-1',
    Command => { dict => [RequestType => 'DeviceInformation'] });
$redis->fcall('mdm_enqueue', 0, $plist, 5, 0, 1, map { "UDID-$_" } 1 .. 10);
$redis->config_set('slowlog-log-slower-than', 0);
$redis->config_set('slowlog-max-len', 10000);
$redis->slowlog('reset');
my $t0 = time;
my @vals;
while (time - $t0 < 1.5) {
    push @vals, scrape()->{mdm_enrollments} // 'none';
}
my $calls = grep { join(' ', @{ $_->[3] }) =~ /mdm_metrics 0/ }
    @{ $redis->slowlog('get', 10000) };
$redis->config_set('slowlog-log-slower-than', 10000);
cmp_ok $calls, '<=', 1, scalar(@vals) . " scrapes in 1.5 s: $calls "
    . 'gauge calls';
is_deeply [ grep { $_ ne $n } @vals ], [], '... all from the cache';

ok wait_until(sub { (scrape()->{mdm_commands} // 0) == 1 }, 5),
    'a refresh after mdm_metrics_cache';
$m = scrape();
is $m->{mdm_queued_commands}, 10, 'mdm_queued_commands 10';
is $m->{mdm_pushes_sent_total}, 7, 'mdm_pushes_sent_total';
is $m->{'mdm_pushes_total{result="ok"}'}, 5, 'mdm_pushes_total ok';
is $m->{'mdm_pushes_total{result="failed"}'}, 2, 'mdm_pushes_total failed';
ok !(grep { /inflight|BadTopic/ } keys %$m), 'per-instance fields left out';
cmp_ok $m->{mdm_redis_gauges_age_seconds}, '<', 3, 'age below the cache';

# mdm_metrics_cache 0: every scrape asks (the next one sees the answer)
$redis->zadd('mdm:enrollments', 1, 'EXTRA');
scrape('/metrics0');
ok wait_until(sub { (scrape('/metrics0')->{mdm_enrollments} // 0)
                    == $n + 1 }, 3), 'mdm_metrics_cache 0: fresh';

# --- promtool ---------------------------------------------------------------
SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool';
    my ($m2, $r2) = scrape();
    $t->spew('metrics.txt', $r2->{body});
    my $d = $t->dir;
    my $out = qx{/usr/bin/promtool check metrics < $d/metrics.txt 2>&1};
    is $?, 0, 'promtool check metrics passes' or diag $out, $r2->{body};
}

# --- the library missing, or another version: the gauges leave -------------
$t->mark_log;
$redis->function_delete('mdm_metrics');
ok wait_until(sub { (scrape()->{mdm_redis_up} // 1) == 0 }, 6),
    'no mdm_metrics library: mdm_redis_up 0';
ok !defined scrape()->{mdm_enrollments}, '... no gauges';
ok $t->wait_for_log(qr/gauges are left out: ERR Function not found/, 3),
    '... and a line saying why';
$t->spew('other.lua', "#!lua name=mdm_metrics\n"
    . "redis.register_function{ function_name = 'mdm_metrics', "
    . "callback = function() return { '2', 0, 0, 0, 0, 0, 0, 0 } end, "
    . "flags = { 'no-writes' } }\n");
qx{redis-cli -s $d/redis.sock -x FUNCTION LOAD REPLACE < $d/other.lua};
sleep 2.1;                                  # past mdm_metrics_cache
scrape();
sleep 0.3;
$m = scrape();
is $m->{mdm_redis_up}, 0, 'another version: mdm_redis_up 0';
ok !defined $m->{mdm_enrollments}, '... no gauges';
is scalar(() = $t->log_since_mark =~ /gauges are left out/g), 1,
    'one line for the whole outage';
$t->load_functions;
ok wait_until(sub { (scrape()->{mdm_redis_up} // 0) == 1 }, 6),
    'loaded again: mdm_redis_up 1';

# --- Redis down: counters still answer, the gauges leave --------------------
$t->mark_log;
$t->stop_redis;
$r = $t->put('/mdm/connect', MdmTest::plist(UDID => 'UDID-1',
             Status => 'Idle'), cert => 'dev1');
is $r->{status}, 503, 'Redis down: a device gets 503';
ok wait_until(sub { (scrape()->{mdm_redis_up} // 1) == 0 }, 6),
    'mdm_redis_up 0';
($m, $r) = scrape();
is $r->{status}, 200, '... the scrape still answers 200';
ok !defined $m->{mdm_enrollments}, '... without the Redis gauges';
cmp_ok $m->{'mdm_unavailable_total{cause="redis_not_ready"}'}
       + $m->{'mdm_unavailable_total{cause="redis_connection_lost"}'}, '>=', 1,
    'the 503 counted by its cause';
is $m->{'mdm_refusals_total{reason="unavailable"}'},
   eval { my $s = 0; $s += $m->{$_} for grep { /^mdm_unavailable_total/ }
          keys %$m; $s }, 'refusals: unavailable == sum of the causes';
ok $t->wait_for_log(qr/mdm: metrics: the Redis gauges are left out/, 3),
    'one log line';

$t->start_redis;
ok wait_until(sub { ($m = scrape())->{mdm_redis_up} }, 12),
    'Redis back: mdm_redis_up 1';
cmp_ok $m->{mdm_redis_reconnects_total}, '>=', 2,
    "reconnects counted ($m->{mdm_redis_reconnects_total})";
is $m->{mdm_enrollments}, 0, 'the new (empty) Redis';

# --- a reload keeps the zone, and the counters in it ---------------------------
my $auth = 'type="Authenticate",code="200"';
my $before = req(scrape(), $auth);
my $ready = () = $t->slurp('error.log') =~ /mdm: redis ready/g;
$t->signal_nginx('HUP');
ok wait_until(sub { (() = $t->slurp('error.log') =~ /mdm: redis ready/g)
                    >= $ready + 2 }, 10), 'reloaded: two new workers';
is req(scrape(), $auth), $before, "counters survive a reload ($before)";

$t->finish;
done_testing;
