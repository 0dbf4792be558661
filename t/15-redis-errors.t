#!/usr/bin/perl
# Redis errors produced for real, each answered 503 + Retry-After with one
# clear line and nothing changed (OOM, Function not found, BUSY, LOADING,
# NOREPLICAS, READONLY, MASTERDOWN); 500 only for an unexpected reply of our
# own functions; the library version re-checked while ready; a late
# Authenticate (Redis paused past the timeout) changes nothing; a 503 from
# mdm.lua's deadline carries Retry-After; a blackholed connection in the
# mismatch state is dropped by the version check's own deadline.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use IO::Socket::INET;
use IO::Socket::UNIX;
use IO::Select;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);
use MdmTest;

my $t = MdmTest->new;
my $d = $t->dir;
$t->start_nginx($t->conf(redis_timeout => '1500ms'));
$t->enroll('DEV1', 'dev1');
my $tu = $t->token_update('DEV1');


sub rcli { my $o = $t->rcli_raw(@_); chomp $o; return $o }

sub served {
    return wait_until(sub {
        $t->put('/mdm/checkin', $tu, cert => 'dev1')->{status} == 200 }, 15);
}

# one request while Redis is in trouble: 503, Retry-After, the line, no change
sub transient {
    my ($what, $re, %o) = @_;
    my $before = $o{no_state} ? '' : $t->redis_state;
    $t->mark_log;
    # connected first, so what happens just before sending is timed closely
    my $c = $t->connect(cert => $o{cert} // 'dev1') or die "connect: $!";
    $o{just_before}->() if $o{just_before};
    my $r = $t->request($c, '/mdm/checkin', $o{body} // $tu);
    close $c;
    is $r->{status}, 503, "$what: 503";
    is $r->{headers}{'retry-after'}, '5', "$what: Retry-After";
    my @lines = grep { /mdm: 503/ } $t->mdm_errors_since_mark;
    is scalar(@lines), 1, "$what: one line";
    like $lines[0] // '', $re, "$what: says why";
    $t->state_unchanged($before, "$what: nothing changed") if !$o{no_state};
}

# test-only functions: a busy loop (no-writes, so FUNCTION KILL ends it)
$t->spew('busy.lua', <<'EOF');
#!lua name=mdmtest
local function now()
    local t = redis.call('TIME')
    return t[1] * 1000 + t[2] / 1000
end
redis.register_function{function_name = 'mdm_test_busy', flags = {'no-writes'},
    callback = function(keys, args)
        local s = now()
        while now() - s < tonumber(args[1]) do end
        return 1
    end}
EOF
my $sock = $t->redis_sock;
system("redis-cli -s $sock -x FUNCTION LOAD REPLACE < $d/busy.lua >/dev/null");

# --- OOM: write functions refused under maxmemory ---------------------------
rcli('CONFIG', 'SET', 'maxmemory', '1');
transient('OOM', qr/redis refused the call, retry later: OOM command not allowed/);
rcli('CONFIG', 'SET', 'maxmemory', '0');
ok served(), 'OOM over: served';

# --- NOREPLICAS: min-replicas-to-write not met ------------------------------
rcli('CONFIG', 'SET', 'min-replicas-to-write', '1');
transient('NOREPLICAS', qr/retry later: NOREPLICAS/);
rcli('CONFIG', 'SET', 'min-replicas-to-write', '0');
ok served(), 'NOREPLICAS over: served';

# --- BUSY: a long function elsewhere ----------------------------------------
rcli('CONFIG', 'SET', 'busy-reply-threshold', '100');
my $busy = fork // die;
if (!$busy) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-cli', '-s', $sock, 'FCALL', 'mdm_test_busy', '0', '20000';
}
ok wait_until(sub { rcli('PING') =~ /^BUSY/ }, 5), 'Redis busy';
transient('BUSY', qr/retry later: BUSY Redis is busy running a script/,
          no_state => 1);
wait_until(sub { rcli('FUNCTION', 'KILL') =~ /OK|NOTBUSY/ }, 5);
waitpid $busy, 0;
ok served(), 'BUSY over: served';

# --- LOADING: DEBUG RELOAD of a slowly loading data set ---------------------
rcli('DEBUG', 'POPULATE', '2000', 'filler');
rcli('CONFIG', 'SET', 'loading-process-events-interval-bytes', '1024');
rcli('CONFIG', 'SET', 'key-load-delay', '1500');
my $reload = fork // die;
if (!$reload) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-cli', '-s', $sock, 'DEBUG', 'RELOAD';
}
ok wait_until(sub { rcli('PING') =~ /^LOADING/ }, 5), 'Redis loading';
transient('LOADING', qr/retry later: LOADING/, no_state => 1);
waitpid $reload, 0;
rcli('CONFIG', 'SET', 'key-load-delay', '0');
ok served(), 'LOADING over: served';

# --- Function not found: the library flushed --------------------------------
my $saved = rcli('FUNCTION', 'DUMP');
rcli('FUNCTION', 'FLUSH');
# the periodic version check may notice first: then the module stops sending
transient('FUNCTION FLUSH',
          qr/retry later: ERR Function not found|redis is not available/,
          no_state => 1);
ok $t->wait_for_log(qr/FCALL_RO mdm_version failed: ERR Function not found/, 8),
    'the periodic version check notices';
transient('library gone', qr/redis is not available/, no_state => 1);
$t->load_functions;
system("redis-cli -s $sock -x FUNCTION LOAD REPLACE < $d/busy.lua >/dev/null");
ok served(), 'library back: served';

# --- another library version loaded while ready ------------------------------
$t->spew('v9.lua', "#!lua name=mdm\nredis.register_function{function_name="
    . "'mdm_version', callback=function() return '9' end, flags={'no-writes'}}\n");
$t->mark_log;
system("redis-cli -s $sock -x FUNCTION LOAD REPLACE < $d/v9.lua >/dev/null");
my $libv = MdmTest::lib_version();
ok $t->wait_for_log(qr/wrong Functions library: mdm_version answered "9", need "$libv"/, 8),
    'FUNCTION LOAD REPLACE of another version noticed';
transient('version 9', qr/redis is not available/);
$t->load_functions;
ok served(), 'version 2 back: served';

# --- 500 only for an unexpected reply of our own functions -------------------
for my $c (["return redis.error_reply('boom')", 'unexpected error from mdm.lua: ERR boom'],
           ["return 'hello'", 'unexpected reply from mdm.lua']) {
    $t->spew('odd.lua', "#!lua name=mdm\n"
        . "redis.register_function{function_name='mdm_version', callback="
        . "function() return '2' end, flags={'no-writes'}}\n"
        . "redis.register_function{function_name='mdm_checkin', callback="
        . "function() $c->[0] end}\n");
    system("redis-cli -s $sock -x FUNCTION LOAD REPLACE < $d/odd.lua >/dev/null");
    $t->mark_log;
    my $r = $t->put('/mdm/checkin', $tu, cert => 'dev1');
    is $r->{status}, 500, "$c->[0]: 500";
    like join("\n", $t->mdm_errors_since_mark), qr/\Q$c->[1]\E/, "$c->[0]: logged";
}
$t->load_functions;
ok served(), 'mdm.lua back: served';

# --- a 503 from mdm.lua (deadline passed in Redis) has Retry-After ----------
# Writes paused past the deadline (1125 ms) but not past our timer (1500 ms).
transient('deadline passed in Redis', qr/deadline passed before Redis ran the call/,
          just_before => sub { rcli('CLIENT', 'PAUSE', '1300', 'WRITE') });

# --- a late Authenticate: answered 503 by the timer, then run: no change ----
my $before = $t->redis_state;
my $calls = sub { rcli('INFO', 'commandstats') =~ /cmdstat_fcall:calls=(\d+)/ ? $1 : 0 };
my $n = $calls->();
kill 'STOP', $t->{redis_pid};
$t->mark_log;
my $t0 = time;
my $r = $t->put('/mdm/checkin', $t->authenticate('LATE1'), cert => 'late1');
is $r->{status}, 503, 'paused Redis: 503 by the timer';
is $r->{headers}{'retry-after'}, '5', 'Retry-After';
ok time - $t0 >= 1.4, 'at the timeout';
like $t->log_since_mark, qr/503 Authenticate id="LATE1".*redis did not answer in time/,
    'timeout logged';
kill 'CONT', $t->{redis_pid};
ok wait_until(sub { $calls->() > $n }, 10), 'Redis ran the late call';
$t->state_unchanged($before, 'the late Authenticate changed nothing');
is $t->redis->exists('mdm:{LATE1}:enr:LATE1'), 0, 'no enrollment LATE1';
ok served(), 'served after the pause';

# --- NOREPLICAS' cousins from replication -----------------------------------
# READONLY: our Redis becomes the replica of another (empty but for the
# functions); MASTERDOWN: a replica whose master is gone, stale data off.
my $mport = $t->port('master');
my $mpid = fork // die;
if (!$mpid) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', $mport, '--bind', '127.0.0.1', '--save', '',
         '--dir', $d, '--dbfilename', 'master.rdb',
         '--logfile', "$d/master.log" or die;
}
push @{ $t->{procs} }, $mpid;
my @mcli = ('redis-cli', '-p', $mport);
ok wait_until(sub { qx{@mcli PING 2>/dev/null} =~ /PONG/ }, 10), 'master up';
for my $f (glob MdmTest::root() . '/redis-scripts/*.lua') {
    qx{@mcli -x FUNCTION LOAD REPLACE < $f};
}
rcli('REPLICAOF', '127.0.0.1', $mport);
ok wait_until(sub { rcli('INFO', 'replication') =~ /master_link_status:up/ }, 10),
    'replica in sync';
transient('READONLY', qr/retry later: READONLY You can't write against a read only replica/,
          no_state => 1);
kill 'TERM', $mpid;
waitpid $mpid, 0;
$t->{procs} = [];
rcli('CONFIG', 'SET', 'replica-serve-stale-data', 'no');
rcli('CONFIG', 'SET', 'replica-read-only', 'no');
ok wait_until(sub { rcli('INFO', 'replication') =~ /master_link_status:down/ }, 10),
    'master gone';
transient('MASTERDOWN', qr/MASTERDOWN Link with MASTER is down/, no_state => 1);
rcli('REPLICAOF', 'NO', 'ONE');
rcli('CONFIG', 'SET', 'replica-serve-stale-data', 'yes');
rcli('CONFIG', 'SET', 'replica-read-only', 'yes');
ok wait_until(sub {
        $t->put('/mdm/checkin', $t->authenticate('DEV2'), cert => 'dev2')
            ->{status} == 200 }, 15), 'a primary again: served';
$t->enroll('DEV1', 'dev1');     # the sync replaced the data set

# TRYAGAIN and CLUSTERDOWN exist only in cluster mode, which the module does
# not use; they are in the same table (ngx_http_mdm_redis.c).

$t->stop_nginx;

# --- an ACL user allowed FCALL but not the commands the function runs -------
rcli('ACL', 'SETUSER', 'narrow', 'on', '>n4rrow', '~mdm:*', '+fcall', '+fcall_ro');
$t->{ready_seen} = scalar(() = $t->slurp('error.log') =~ /mdm: redis ready/g);
$t->start_nginx($t->conf(redis => 'unix:%%TESTDIR%%/redis.sock',
                         redis_timeout => '1500ms username=narrow password=n4rrow'));
transient('ACL too narrow',
          qr/retry later: ERR The user executing the script can't run this command/);
$t->stop_nginx;
$t->{ready_seen} = 0;

# --- a blackholed connection while the version is wrong ----------------------
# A proxy in front of Redis; SIGUSR1 stops forwarding on the connections it
# has (a dead peer that never resets), new ones still pass.
my $pport = $t->port('proxy');
my $proxy = fork // die;
if (!$proxy) {
    my $hole = 0;
    $SIG{USR1} = sub { $hole = 1 };
    my $l = IO::Socket::INET->new(Listen => 16, LocalAddr => "127.0.0.1:$pport",
                                  ReuseAddr => 1) or die;
    my $sel = IO::Select->new($l);
    my (%peer, %dead);
    while (1) {
        if ($hole) { $dead{$_} = 1 for keys %peer; $hole = 0 }
        my @ready = $sel->can_read(0.05);
        for my $s (@ready) {
            if ($s == $l) {
                my $c = $l->accept or next;
                my $u = IO::Socket::UNIX->new(Peer => $sock) or next;
                $peer{$c} = $u; $peer{$u} = $c;
                $sel->add($c, $u);
                next;
            }
            my $n = sysread($s, my $buf, 65536);
            my $o = $peer{$s};
            if (!$n) {
                $sel->remove($s, $o);
                delete @peer{$s, $o};
                close $s; close $o;
                next;
            }
            syswrite($o, $buf) unless $dead{$s};
        }
    }
}
push @{ $t->{procs} }, $proxy;
system("redis-cli -s $sock -x FUNCTION LOAD REPLACE < $d/v9.lua >/dev/null");
$t->write_conf($t->conf(redis => "127.0.0.1:$pport", redis_timeout => '1500ms'));
{
    no warnings 'redefine';
    local *MdmTest::wait_ready = sub { 1 };
    $t->mark_log;
    $t->start_nginx;
}
ok $t->wait_for_log(qr/wrong Functions library: mdm_version answered "9"/, 5),
    'through the proxy: wrong version';
kill 'USR1', $proxy;
$t->load_functions;
ok $t->wait_for_log(qr/did not answer the version check in time, reconnecting/, 10),
    'the re-check has a deadline';
ok $t->wait_for_log(qr/mdm: redis ready/, 10), 'reconnected, ready';
ok served(), 'served through a new connection';

$t->finish;
done_testing;
