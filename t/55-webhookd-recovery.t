#!/usr/bin/perl
# mdm-webhookd: nothing lost. SIGKILL mid-backlog and a restart (duplicates
# only of what was in flight, counted); a backlog larger than events_maxlen
# survives the trim of mdm:events; a gap (trimmed before the deliverer read
# it) is detected; --max-backlog bounds the backlog; the shipped ACL user
# mdm-webhookd can do its work and nothing else.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use JSON::PP;
use Time::HiRes qw(time sleep);
use POSIX ();
use WebhookTest;

plan skip_all => "build webhookd first (" . WebhookTest::bin() . ")"
    unless -x WebhookTest::bin();

my $t = WebhookTest->new(no_pki => 1);
my $d = $t->dir;
my $r = $t->redis;
our $taken_base = 0;

# seed N events over K enrollments as mdm.lua writes them (MAXLEN ~ cap),
# pipelined; returns { enrollment => [ids in order] }
sub seed_many {
    my ($n, $k, $prefix, $cap, $chunk) = @_;
    my %want;
    my @ids;
    for my $i (0 .. $n - 1) {
        # at the rate the deliverer takes them (a real fleet's rate is far
        # lower): the cap must not overtake a running deliverer here
        if ($chunk && $i && $i % $chunk == 0) {
            $r->wait_all_responses;
            $t->wait_for(sub { ($t->stats->{taken} // 0) >= $taken_base + $i },
                         10, 'taken');
        }
        my $dev = sprintf '%s-%03d', $prefix, $i % $k;
        $r->xadd('mdm:events', 'MAXLEN', '~', $cap // 100000, '*',
                 type => 'Report', id => $dev, ms => int(time * 1000),
                 status => 'Idle', sub { push @ids, [$dev, $_[0]] });
    }
    $r->wait_all_responses;
    push @{ $want{ $_->[0] } }, $_->[1] for @ids;
    return \%want;
}

# first delivery of each event, per enrollment, and the duplicate count
sub deliveries {
    my ($prefix) = @_;
    my (%got, %seen);
    my $dups = 0;
    for my $g ($t->delivered_brief) {
        my ($eid, $udid) = @$g;
        next unless $udid =~ /^\Q$prefix\E-/;
        if ($seen{$eid}++) { $dups++; next }
        push @{ $got{$udid} }, $eid;
    }
    return (\%got, $dups, scalar keys %seen);
}

$t->start_receiver(brief => 1, delay => 2);

# --- a group created before mdm:events exists (from-start off) -------------------
ok !$r->exists('mdm:events'), 'no mdm:events yet';
my $f = $t->start_webhookd(name => 'fresh',
    opts => { group => 'fresh', 'from-start' => undef });
ok $t->wait_for(sub { $r->exists('mdm:events')
        && grep { $_->[1] eq 'fresh' } @{ $r->xinfo('GROUPS', 'mdm:events') } }, 10),
    'the group is created at once (MKSTREAM)';
my $fid = $t->seed('Authenticate', 'F-1');
ok $t->wait_for(sub { grep { $_->[0] eq $fid } $t->delivered_brief }, 10),
    'the first event after the start is delivered';
$t->stop_webhookd($f);

# --- SIGKILL mid-backlog, restart ------------------------------------------------
my $want = seed_many(3000, 30, 'K');
my $w = $t->start_webhookd;
ok $t->wait_for(sub { $t->received >= 800 }, 30), 'delivering';
kill 'KILL', $w;
waitpid $w, 0;
delete $t->{webhookd}{$w};
my $at_kill = $t->received;
ok $at_kill < 3000, "killed mid-backlog ($at_kill delivered)";
$w = $t->start_webhookd;
my ($got, $dups, $n);
ok $t->wait_for(sub { ($got, $dups, $n) = deliveries('K'); $n >= 3000 }, 40),
    'after the restart every event is delivered';
($got, $dups, $n) = deliveries('K');
is_deeply $got, $want, 'first deliveries in order per enrollment';
ok $dups <= 2 * 16, "duplicates only of what was in flight at the kill: $dups";
diag "SIGKILL at $at_kill of 3000 delivered: $dups delivered twice";
is $t->stats->{backlog}, 0, 'backlog empty';
is $r->xpending('mdm:events', 'mdm-webhookd')->[0], 0,
    'nothing pending in the group';

# --- a second deliverer of the same group takes over, the first stops ---------------
my $w2 = $t->start_webhookd(name => 'w2');
ok $t->wait_for(sub { waitpid($w, POSIX::WNOHANG()) == $w }, 10),
    'the first deliverer stops once another takes over its group';
is $? >> 8, 0, '... with exit 0 (no restart loop under systemd)';
delete $t->{webhookd}{$w};
like $t->webhookd_log('w1'), qr/LOCKED.*took over/, '... and says why';
$w = $w2;

# --- a backlog larger than events_maxlen survives the trim ----------------------
$t->stop_receiver;
$taken_base = $t->stats->{taken};
$want = seed_many(5000, 50, 'T', 1000, 500);
ok $r->xlen('mdm:events') < 1500, 'mdm:events trimmed to about 1000 ('
    . $r->xlen('mdm:events') . ')';
ok $t->wait_for(sub { $t->stats->{backlog} >= 5000 }, 20),
    'all 5000 are in the backlog';
$t->start_receiver(brief => 1);
ok $t->wait_for(sub { (deliveries('T'))[2] >= 5000 }, 30),
    'all 5000 delivered once the receiver is back';
($got, $dups) = deliveries('T');
is_deeply $got, $want, 'in order per enrollment';
is $dups, 0, 'no duplicates without a crash';
ok !$t->stats->{gaps}, 'no gap';

# --- a gap: trimmed while the deliverer was not running -------------------------
$t->stop_webhookd($w);
seed_many(3000, 10, 'G', 1000);
$w = $t->start_webhookd;
ok $t->wait_for(sub { $t->stats->{gaps} }, 10), 'the gap is detected';
ok $t->stats->{lost} >= 1900 && $t->stats->{lost} <= 2100,
    'and what was lost counted (' . $t->stats->{lost} . ' of 3000)';
ok $t->wait_for(sub { $t->webhookd_log =~ /trimmed past entries/ }, 5),
    'and logged';
ok $t->wait_for(sub { $t->stats->{backlog} == 0 }, 20), 'the rest delivered';

# --- --max-backlog ------------------------------------------------------------------
$t->stop_webhookd($w);
$t->stop_receiver;
$w = $t->start_webhookd(opts => { 'max-backlog' => 100 });
$want = seed_many(300, 3, 'B');
ok $t->wait_for(sub { ($t->stats->{full} // 0) > 0 }, 10), 'the bound is hit';
is $t->stats->{backlog}, 100, 'the backlog stops at --max-backlog';
my ($info) = grep { $_->{name} eq 'mdm-webhookd' }
    map { +{ @$_ } } @{ $r->xinfo('GROUPS', 'mdm:events') };
is scalar @{ $r->xrange('mdm:events', "($info->{'last-delivered-id'}", '+') },
    200, 'the rest waits in mdm:events, unread';
like $t->webhookd_log, qr/backlog at its bound/, 'logged';
$t->start_receiver(brief => 1);
ok $t->wait_for(sub { (deliveries('B'))[2] >= 300 }, 20), 'all 300 delivered';
is_deeply((deliveries('B'))[0], $want, 'in order');
$t->stop_webhookd($w);

# --- the shipped ACL user ---------------------------------------------------------
my ($line) = grep { /^user mdm-webhookd / }
    split /\n/, $t->slurp(MdmTest::root() . '/redis-scripts/users.acl');
ok $line, 'users.acl has mdm-webhookd';
$line =~ s/^user mdm-webhookd //;
my $pw = 'webhookd-Pw4';
$line =~ s/#\@WEBHOOKD_SHA256\@/>$pw/;
my @rules = $line =~ /(\([^)]*\)|\S+)/g;
is $t->rcli_raw('ACL', 'SETUSER', 'mdm-webhookd', @rules), "OK\n",
    'its rules load';
sub as_hook {
    return $t->rcli_raw('--user', 'mdm-webhookd', '--pass', $pw,
                        '--no-auth-warning', @_);
}
$r->hset('mdm:{ACL-1}:enr:ACL-1', type => 'Device',
         raw_authenticate => '<plist version="1.0"><dict/></plist>');
$r->hset('mdm:{ACL-1}:res:ACL-1:U-1', raw => '<plist>ack</plist>');
my $id1 = $t->seed('Authenticate', 'ACL-1');
my $id2 = $t->seed('Report', 'ACL-1', status => 'Acknowledged', uuid => 'U-1');
$w = $t->start_webhookd(name => 'acl', opts => {
    redis => 'unix:' . $t->redis_sock . " username=mdm-webhookd password=$pw",
    group => 'acl-group', 'hmac-secret' => 'x', 'max-attempts' => 2 });
$t->rules({ default => 'ok', next => [ 500 ] });
ok $t->wait_for(sub { grep { ($_->{event_id} // '') eq $id2 } $t->delivered },
                10), 'delivers as mdm-webhookd (take, raw payloads, done)';
$t->rules({ default => 500 });
my $id3 = $t->seed('CheckOut', 'ACL-1');
ok $t->wait_for(sub { $r->llen('mdm:webhook:dead') > 0
                      && $r->lindex('mdm:webhook:dead', 0) =~ /\Q$id3\E/ }, 10),
    'and dead-letters as mdm-webhookd';
$t->rules({ default => 'ok' });
unlike $t->webhookd_log('acl'), qr/NOPERM|no permissions/i, 'never refused';
like as_hook('FCALL_RO', 'mdm_webhook_stats', 3, 'mdm:webhook:backlog',
             'mdm:webhook:dead', 'mdm:webhook:stats'), qr/taken/, 'stats';
for my $c ([ 'HSET', 'mdm:{ACL-1}:enr:ACL-1', 'enabled', '1' ],
           [ 'XADD', 'mdm:events', '*', 'type', 'x' ],
           [ 'XRANGE', 'mdm:events', '-', '+' ],
           [ 'DEL', 'mdm:events' ],
           [ 'HGET', 'mdm:cmd:U-1', 'body' ],
           [ 'GET', 'mdm:cert:abc' ],
           [ 'HSET', 'mdm:policy', 'allow_rebind', '1' ],
           [ 'FCALL', 'mdm_enqueue', 0, 'x', 5, 0, 0, 'ACL-1' ],
           [ 'FCALL', 'mdm_push', 0, 'ACL-1' ],
           [ 'FUNCTION', 'FLUSH' ], [ 'KEYS', '*' ], [ 'CONFIG', 'GET', '*' ],
           [ 'EVAL', 'return 1', 0 ]) {
    like as_hook(@$c), qr/NOPERM|no permissions|ERR/i, "refused: @$c[0, 1]";
}
is $r->hget('mdm:{ACL-1}:enr:ACL-1', 'enabled'), undef, 'nothing written';

$t->finish;
done_testing;
