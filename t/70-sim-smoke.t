# mdm-sim against the test stack: the counts must add up (correctness, not
# speed). Each device has its own minted certificate; enrollment, polls,
# command cycles and Mdm-Signature requests go through the real module and
# Redis, and every enqueued command must come back acknowledged exactly once.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use FindBin;
use lib "$FindBin::Bin/lib";
use MdmTest;

my $SIM = $ENV{MDM_SIM} // "$MdmTest::ROOT/bench/mdm-sim";
plan skip_all => "$SIM not built (make -C bench)" unless -x $SIM;

my $t = MdmTest->new;
my $d = $t->dir;

# The standard server, plus one that identifies devices by Mdm-Signature
# only (no TLS client certificate), as behind a TLS-terminating balancer.
my $conf = $t->conf;
my $sig_server = <<EOF;
    mdm_device_ca %%TESTDIR%%/ca.crt;
    server {
        listen 127.0.0.1:%%PORT_sig%% ssl;
        server_name localhost;
        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;
        client_max_body_size 64k;
        client_body_buffer_size 64k;
        mdm_topic $MdmTest::TOPIC;
        mdm_identity signature;
        location = /mdm/checkin { mdm_checkin; }
        location = /mdm/connect { mdm_command; }
    }
EOF
$conf =~ s/^(\s*server \{)/$sig_server$1/m or die 'conf shape changed';
$t->start_nginx($conf);

# sim(args...) runs mdm-sim with --json; returns (report, exit code)
sub sim {
    my (@args) = @_;
    my $port = $t->port('https');
    my @cmd = ($SIM, '--json', '--connect', "127.0.0.1:$port",
               '--ca-cert', "$d/ca.crt", '--ca-key', "$d/ca.key",
               '--certs', "$d/simcerts", '--topic', $MdmTest::TOPIC,
               '--timeout', 20, @args);
    my $out = qx{@cmd 2>>$d/sim.err};
    my $rc = $? >> 8;
    my $j = eval { decode_json($out) };
    diag("mdm-sim @args: $out " . $t->slurp('sim.err')) unless $j;
    return ($j // {}, $rc);
}

sub no_errors {
    my ($j, $name) = @_;
    is($j->{errors}{total}, 0, "$name: no errors")
        or diag(encode_json($j->{errors}));
}

my $N = 20;

# ---- static: the ceiling location, devices' certificates on TLS ------------
my ($j, $rc) = sim('-s', 'static', '-n', $N, '--sessions', 5);
is($rc, 0, 'static: exit 0');
is($j->{requests}, $N * 5, 'static: every request answered');
is($j->{by_kind}{static}, $N * 5, 'static: all to the ceiling URL');
is($j->{handshakes}, $N, 'static: one keep-alive connection per device');
no_errors($j, 'static');

# ---- enroll: Authenticate + TokenUpdate per device -------------------------
($j, $rc) = sim('-s', 'enroll', '-n', $N, '--sessions', 1);
is($rc, 0, 'enroll: exit 0');
is($j->{by_kind}{authenticate}, $N, 'enroll: one Authenticate per device');
is($j->{by_kind}{token_update}, $N, 'enroll: one TokenUpdate per device');
no_errors($j, 'enroll');

my $r = $t->redis;
my $udid0 = '00008030-5133AA0000000000';
my $udid = sub { sprintf '00008030-5133AA00%08X', $_[0] };
is($udid->(0), $udid0, 'UDID scheme');
my $enabled = grep {
    ($r->hget("mdm:{" . $udid->($_) . "}:enr:" . $udid->($_), 'enabled')
        // '') eq '1'
} 0 .. $N - 1;
is($enabled, $N, 'enroll: every device enrolled and enabled');
is(length($r->hget("mdm:{$udid0}:enr:$udid0", 'unlock_token') // ''), 1288,
   'enroll: UnlockToken stored (1288 bytes)');
is(length($r->hget("mdm:{$udid0}:enr:$udid0", 'token') // ''), 64,
   'enroll: push token stored as hex');

# ---- poll: Idle -> zero-byte -----------------------------------------------
($j, $rc) = sim('-s', 'poll', '-n', $N, '--sessions', 3);
is($rc, 0, 'poll: exit 0');
is($j->{by_kind}{idle}, $N * 3, 'poll: three Idle sessions per device');
is($j->{commands}{received}, 0, 'poll: nothing queued, nothing received');
no_errors($j, 'poll');

# ---- cycle: 5 commands per device, drained, each acknowledged once ---------
my $K = 5;
($j, $rc) = sim('-s', 'cycle', '-n', $N, '-c', 7, '--commands', $K,
                '--redis', $t->redis_sock);
is($rc, 0, 'cycle: exit 0');
no_errors($j, 'cycle');
my $c = $j->{commands};
is($c->{enqueued}, $N * $K, 'cycle: enqueued through mdm_enqueue');
is($c->{received}, $N * $K, 'cycle: every command delivered once');
is($c->{acknowledged}, $N * $K, 'cycle: every command acknowledged');
is($c->{duplicate}, 0, 'cycle: none delivered again after its ack');
is($c->{foreign}, 0, 'cycle: no command from elsewhere');
is($j->{by_kind}{acknowledged}, $N * $K, 'cycle: one Ack request each');
is($j->{by_kind}{idle}, $N, 'cycle: one Idle per device opens its session');
is($j->{devices_done}, $N, 'cycle: every queue drained');

# the server's side of the same story
my $queued = 0;
$queued += $r->zcard("mdm:{" . $udid->($_) . "}:q:" . $udid->($_))
    for 0 .. $N - 1;
is($queued, 0, 'cycle: server queues empty');
my @res = $r->keys("mdm:{$udid0}:res:$udid0:*");
is(scalar(@res), $K, 'cycle: one result per command for a device');
is(scalar(grep { ($r->hget($_, 'status') // '') eq 'Acknowledged' } @res),
   $K, 'cycle: results say Acknowledged');

# ---- mixed: check-ins, polls and commands interleaved ----------------------
($j, $rc) = sim('-s', 'mixed', '-n', $N, '--sessions', 4, '--commands', 2,
                '--redis', $t->redis_sock, '--mixed-checkin', 0.5);
is($rc, 0, 'mixed: exit 0');
no_errors($j, 'mixed');
is($j->{commands}{duplicate}, 0, 'mixed: no command delivered twice');
is($j->{commands}{acknowledged}, $N * 2,
   'mixed: queued commands acknowledged within the sessions');
is($j->{by_kind}{idle}, $N * 4, 'mixed: one Idle per session');

# ---- Mdm-Signature instead of the TLS certificate --------------------------
($j, $rc) = sim('-s', 'poll', '-n', 5, '--sessions', 2, '--signature',
                '--connect', '127.0.0.1:' . $t->port('sig'));
is($rc, 0, 'signature poll: exit 0');
is($j->{by_kind}{idle}, 10, 'signature poll: every request answered');
no_errors($j, 'signature poll');

# ---- enrollment with Mdm-Signature only, then polls, on new devices --------
($j, $rc) = sim('-s', 'enroll', '-n', 4, '--sessions', 1, '--signature',
                '--udid-prefix', 'SIGNED-', '--connect',
                '127.0.0.1:' . $t->port('sig'));
is($rc, 0, 'signature enroll: exit 0');
is($j->{by_kind}{token_update}, 4, 'signature enroll: four TokenUpdates');
no_errors($j, 'signature enroll');
is($r->hget('mdm:{SIGNED-00000003}:enr:SIGNED-00000003', 'enabled'), '1',
   'signature enroll: enrolled by signature alone');

# ---- load shapes: warm-up, open loop, few handshakes at a time -------------
($j, $rc) = sim('-s', 'poll', '-n', 10, '--sessions', 3, '--warmup',
                '--cpu-pid', "redis:$t->{redis_pid}");
is($rc, 0, 'warm-up: exit 0');
is($j->{warmup_requests}, 10, 'warm-up: first request of each device');
is($j->{requests}, 20, 'warm-up: the rest measured');
ok(exists $j->{cpu_us}{redis} && exists $j->{cpu_us}{sim},
   'warm-up: CPU of Redis and of the simulator reported');

($j, $rc) = sim('-s', 'poll', '-n', 10, '--sessions', 2, '--rate', 200);
is($rc, 0, 'open loop: exit 0');
is($j->{by_kind}{idle}, 20, 'open loop: every scheduled session ran');
no_errors($j, 'open loop');

($j, $rc) = sim('-s', 'poll', '-n', $N, '-c', 6, '--sessions', 1,
                '--max-connecting', 2);
is($rc, 0, 'rotation: exit 0');
is($j->{handshakes}, $N, 'rotation: a handshake per device switch');
is($j->{by_kind}{idle}, $N, 'rotation: every device polled once');

# ---- the counts can fail: unknown devices are refused ----------------------
($j, $rc) = sim('-s', 'poll', '-n', 3, '--sessions', 1, '--udid-prefix',
                'UNENROLLED-');
is($rc, 1, 'unenrolled poll: exit 1');
is($j->{errors}{status}{403}, 3, 'unenrolled poll: three 403s counted');

# ---- bulk enqueue: ids enrolled through mdm_checkin, one mdm_enqueue --------
($j, $rc) = sim('-s', 'enqueue', '--targets', 50, '--udid-prefix', 'BULK-',
                '--redis', $t->redis_sock);
is($rc, 0, 'enqueue: exit 0');
is($j->{commands}{enqueued}, 50, 'enqueue: one command to 50 ids');
ok($j->{redis}{enroll_memory} > 0 && $j->{redis}{enqueue_memory} > 0,
   'enqueue: memory deltas measured');
is($r->zcard('mdm:{BULK-00000031}:q:BULK-00000031'), 1,
   'enqueue: the last id has the command queued');

# ---- ddm: full syncs (tokens, items, each declaration, status) -------------
($j, $rc) = sim('-s', 'ddm', '-n', 5, '--sessions', 2, '--ddm-decls', 4,
                '--redis', $t->redis_sock);
is($rc, 0, 'ddm: exit 0');
no_errors($j, 'ddm');
is($j->{by_kind}{ddm_tokens}, 10, 'ddm: tokens once a sync');
is($j->{by_kind}{ddm_items}, 10, 'ddm: declaration-items once a sync');
is($j->{by_kind}{ddm_declaration}, 40, 'ddm: each of 4 declarations fetched');
is($j->{by_kind}{ddm_status}, 10, 'ddm: one status report a sync');
is($j->{sessions}, 10, 'ddm: two syncs per device');
ok($j->{ddm}{status_bytes} > 2000, 'ddm: a status report of a few KB');
is($j->{ddm}{devices}, 5, 'ddm: memory of each enrollment measured');
ok($j->{ddm}{mem_dstat} > 0 && $j->{ddm}{mem_ditems} > 0,
   'ddm: declaration states and status items stored');
is($r->hlen("mdm:{$udid0}:dstat:$udid0"), 4, 'ddm: a state per declaration');
like($r->hget("mdm:{$udid0}:dstat:$udid0", 'bench.su.3') // '',
     qr/"valid":"valid"/, 'ddm: the state as reported');
is($r->zcard("mdm:{$udid0}:q:$udid0"), 0,
   'ddm: the assignment\'s sync command taken off the queue');

# ---- ddm-fanout: one changed declaration to a set, no HTTP ------------------
($j, $rc) = sim('-s', 'ddm-fanout', '--targets', 2500, '--target-prefix',
                'FAN-', '--enroll', 'light', '--redis', $t->redis_sock,
                '--cleanup');
is($rc, 0, 'ddm-fanout: exit 0');
is($j->{ddm}{synced}, 2500, 'ddm-fanout: every enrollment synced');
is($j->{ddm}{queued}, 2500, 'ddm-fanout: a command queued for each');
is($j->{ddm}{have_cmd}, 2500, 'ddm-fanout: checked in every queue');
is($j->{ddm}{have_push}, 2500, 'ddm-fanout: a push requested for each');
is($j->{ddm}{not_dm}, 0, 'ddm-fanout: DeclarativeManagement commands');
is($j->{ddm}{calls}, 3, 'ddm-fanout: touch, then two mdm_ddm_fanout (1,000 a call)');
is($r->exists('mdm:{FAN-00000000}:ddm:FAN-00000000'), 0,
   'ddm-fanout: --cleanup took the DDM state away');
is($r->scard('mdm:ddm:setenr:bench-fan'), 0,
   'ddm-fanout: and the set\'s enrollments');

# ---- nobody listening: connect errors, bounded, exit 1 ----------------------
($j, $rc) = sim('-s', 'poll', '-n', 3, '--sessions', 1, '--connect',
                '127.0.0.1:' . $t->port('closed'));
is($rc, 1, 'no server: exit 1');
is($j->{errors}{connect}, 3, 'no server: one connect error per device');

$t->finish;
done_testing;
