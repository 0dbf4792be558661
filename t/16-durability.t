#!/usr/bin/perl
# Durability: with `appendfsync always` every report nginx answered 200 is
# still in Redis after a SIGKILL of redis-server and a restart on the same
# AOF. The same check under `everysec` with a slow fsync (a shim delays
# fdatasync in Redis' background thread) shows what the README says it
# loses: replies sent while the AOF write was postponed.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use MdmTest;

my $DEVS = 8;          # one keep-alive connection each
my $CMDS = 300;        # queued for every device: more than a burst drains

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my @devs = map { sprintf 'DUR%d', $_ } 1 .. $DEVS;

sub report {
    my ($udid, @kv) = @_;
    return MdmTest::plist(UDID => $udid, @kv);
}

sub next_uuid { ($_[0] =~ m{<key>CommandUUID</key>\s*<string>([^<]+)})[0] }

# Enrolls the fleet and queues $CMDS commands for all of it, pipelined
# (one fsync for many under `always`).
sub prepare {
    $t->enroll($_, lc $_) for @devs;
    my $r = $t->redis;
    for my $i (1 .. $CMDS) {
        my $body = MdmTest::plist(CommandUUID => sprintf('C-%05d', $i),
            Command => { dict => [RequestType => 'ProfileList'] });
        $r->fcall('mdm_enqueue', 0, $body, 5, 0, 1, @devs, sub {});
    }
    $r->wait_all_responses;
}

# One process per device: Idle, then Acknowledged for each command it is
# given, appending the UUID to acked.DEV after each 200; stops at the first
# other answer (Redis gone: 503).
sub start_devices {
    my @pids;
    for my $dev (@devs) {
        unlink "$d/acked.$dev";
        my $pid = fork // die;
        if (!$pid) {
            open my $log, '>', "$d/acked.$dev" or die;
            my $sock = $t->connect(cert => lc $dev) or POSIX::_exit(1);
            my $res = $t->request($sock, '/mdm/connect',
                report($dev, Status => 'Idle'), keepalive => 1);
            while ($res->{status} == 200 and my $u = next_uuid($res->{body})) {
                $res = $t->request($sock, '/mdm/connect',
                    report($dev, Status => 'Acknowledged', CommandUUID => $u),
                    keepalive => 1);
                syswrite $log, "$u\n" if $res->{status} == 200;
            }
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    return @pids;
}

sub acked {
    my %a;
    for my $dev (@devs) {
        $a{$dev} = [grep { length } split /\n/, $t->slurp("acked.$dev")];
    }
    return \%a;
}

sub acked_count {
    my $a = acked();
    my $n = 0;
    $n += @$_ for values %$a;
    return $n;
}


sub kill_redis {
    my $pid = delete $t->{redis_pid};
    kill 'KILL', $pid;
    waitpid $pid, 0;
    unlink $t->redis_sock;
}

# Acknowledged reports answered 200 whose result is not in Redis.
sub lost {
    my ($acked) = @_;
    my ($n, @lost) = (0);
    for my $dev (@devs) {
        for my $u (@{ $acked->{$dev} }) {
            $n++;
            my %res = @{ $t->fcall('mdm_result', [], $dev, $u) // [] };
            push @lost, "$dev:$u" if ($res{status} // '') ne 'Acknowledged';
        }
    }
    return ($n, @lost);
}

sub reap { waitpid $_, 0 for @_ }

# --- appendfsync always: SIGKILL in the middle of a burst loses nothing ----
$t->start_redis(aof => 1, args => ['--appendfsync', 'always']);
$t->start_nginx($t->conf, workers => 2);
prepare();
my @kids = start_devices();
ok wait_until(sub { acked_count() >= 300 }, 10), 'burst under way'
    or diag(acked_count() . ' acknowledged');
kill_redis();
reap(@kids);
my $acked = acked();
$t->mark_log;
$t->start_redis(aof => 1, args => ['--appendfsync', 'always'],
                no_functions => 1);
my ($n, @lost) = lost($acked);
ok $n >= 300, "$n reports answered 200 before the kill";
is scalar(@lost), 0, 'always: every acknowledged report is in Redis'
    or diag("lost: @lost[0 .. ($#lost < 9 ? $#lost : 9)]");

# Nothing acknowledged is handed out again.
ok $t->wait_for_log(qr/mdm: redis ready(?s:.*)mdm: redis ready/, 10),
    'both workers reconnected';
my @again;
for my $dev (@devs) {
    my %seen = map { $_ => 1 } @{ $acked->{$dev} };
    my $r = $t->put('/mdm/connect', report($dev, Status => 'Idle'),
                    cert => lc $dev);
    push @again, $dev if $r->{status} != 200
        || $seen{ next_uuid($r->{body}) // '' };
}
is "@again", '', 'each device gets a command it has not acknowledged';

# --- everysec, slow fsync: the postponed write is lost with the process ----
$t->stop_nginx;
$t->stop_redis;
system("rm -rf $d/appendonlydir") == 0 or die;
$t->spew('slow-fsync.c', <<'EOF');
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

/* fdatasync() taking SLOW_FSYNC_MS longer off the main thread: a busy disk
 * as Redis' background fsync sees it. */
int
fdatasync(int fd)
{
    static int (*real)(int);
    const char *ms = getenv("SLOW_FSYNC_MS");

    if (real == NULL) {
        real = (int (*)(int)) dlsym(RTLD_NEXT, "fdatasync");
    }
    if (ms != NULL && syscall(SYS_gettid) != getpid()) {
        usleep(atoi(ms) * 1000);
    }
    return real(fd);
}
EOF
system("cc -shared -fPIC -o $d/slow-fsync.so $d/slow-fsync.c -ldl") == 0
    or die 'cc slow-fsync.so';
{
    local $ENV{LD_PRELOAD} = "$d/slow-fsync.so";
    local $ENV{SLOW_FSYNC_MS} = 1500;
    $t->start_redis(aof => 1, args => ['--appendfsync', 'everysec']);
}
$t->{ready_seen} = () = $t->slurp('error.log') =~ /mdm: redis ready/g;
$t->start_nginx($t->conf, workers => 2);
prepare();
@kids = start_devices();

# Acknowledged reports whose result the AOF file does not hold (yet).
sub not_in_aof {
    my ($a) = @_;
    my $aof = '';
    $aof .= $t->slurp($_) for glob "$d/appendonlydir/*.aof";
    return grep { index($aof, "res:$_") < 0 }
        map { my $dev = $_; map { "$dev:$_" } @{ $a->{$dev} } } @devs;
}

# Freeze Redis while a background fsync runs; if reports answered 200 are
# not in the AOF file, they exist only in Redis' memory: kill it.
ok wait_until(sub {
    return 0 if acked_count() < 100
        || $t->rcli_raw('INFO', 'persistence') !~ /aof_pending_bio_fsync:1/;
    kill 'STOP', $t->{redis_pid};
    return 1 if not_in_aof(acked());
    kill 'CONT', $t->{redis_pid};
    return 0;
}, 10), 'everysec: replies sent while the AOF write is postponed';
kill_redis();
reap(@kids);
$acked = acked();
my @held = sort(not_in_aof($acked));
$t->start_redis(aof => 1, args => ['--appendfsync', 'everysec'],
                no_functions => 1);
($n, @lost) = lost($acked);
ok @held > 0, scalar(@held) . " of $n acknowledged reports not in the AOF";
is "@{[sort @lost]}", "@held",
    'everysec: a SIGKILL lost exactly those (as the README says)';

$t->finish;
done_testing;
