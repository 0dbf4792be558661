#!/usr/bin/perl
# Sentinel faults other than a failover (issue 14): all sentinels down while
# the primary is fine (service goes on); with replicas=1, the replica's link
# down (503 + Retry-After within wait_timeout, then recovery).

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(sleep time);
use MdmTest;
use MdmSentinel;

my $t = MdmTest->new(no_redis => 1);
my $c = MdmSentinel->new($t);
$t->start_nginx($t->conf(redis => $c->spec . ' replicas=1 wait_timeout=300',
                         redis_timeout => '2s'), workers => 2);
like $t->slurp('error.log'), qr/primary is 127\.0\.0\.1:${\ $c->port(0)}/,
    'the sentinels named the primary';
$t->enroll('SF1', 'sf1');
is $c->cli(0, 'HGET', 'mdm:{SF1}:enr:SF1', 'token_updates') =~ /1/ ? 1 : 0, 1,
    'enrolled on the primary';

sub checkin {
    my ($t0, $r) = (time);
    $r = $t->put('/mdm/checkin', $t->token_update('SF1'), cert => 'sf1');
    return ($r, time - $t0);
}

# --- the replica's link down: WAIT cannot be met ----------------------------
$t->mark_log;
$c->signal('redis1', 'STOP');
my ($r, $dt) = checkin();
is $r->{status}, 503, 'replica stopped: 503';
is $r->{headers}{'retry-after'}, '5', 'with Retry-After';
cmp_ok $dt, '<', 1.5, sprintf('within wait_timeout plus a margin (%.0f ms)',
                              $dt * 1000);
like $t->log_since_mark, qr/NOREPLICAS fewer replicas/, 'the log says why';
$c->signal('redis1', 'CONT');
ok MdmTest::wait_until(sub { (checkin())[0]{status} == 200 }, 10),
    'replica back: 200 again';

# --- all sentinels down, the primary fine: nothing changes ------------------
$c->kill_proc("sentinel$_", 'TERM') for 0 .. 2;
$t->mark_log;
my $ok = 0;
$ok += (checkin())[0]{status} == 200 for 1 .. 20;
is $ok, 20, 'sentinels down: all 20 check-ins answered 200';
my $r2 = $t->put('/mdm/connect', MdmTest::plist(UDID => 'SF1',
                 Status => 'Idle'), cert => 'sf1');
is $r2->{status}, 200, 'and the command channel too';
unlike join("\n", $t->mdm_errors_since_mark), qr/mdm: 503/,
    'no 503 while the sentinels are away';

$t->finish;
done_testing;
