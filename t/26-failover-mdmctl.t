#!/usr/bin/perl
# mdmctl through Sentinel (issue 14): --redis sentinel=... master=NAME finds
# the primary; replicas=1 confirms admin writes with WAIT (an error when the
# replica cannot confirm); after SIGKILL of the primary, a command run
# meanwhile waits for the promotion and lands on the new primary.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep time);
use MdmTest;
use MdmSentinel;

my $BIN = MdmTest::root() . '/mdmctl/mdmctl';
plan skip_all => "build mdmctl first ($BIN)" unless -x $BIN;

my $t = MdmTest->new(no_redis => 1);
my $c = MdmSentinel->new($t);
$t->start_nginx($t->conf(redis => $c->spec, redis_timeout => '2s'));
$t->enroll('FOM1', 'fom1');
my $dir = $t->dir;

my $nrun = 0;
sub ctl {
    my ($spec, @args) = @_;
    my $n = ++$nrun;
    my $pid = fork // die;
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$dir/ctl$n.out" or die;
        open STDERR, '>', "$dir/ctl$n.err" or die;
        $ENV{MDM_REDIS} = $spec;
        exec $BIN, @args or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return { rc => $? >> 8, out => $t->slurp("ctl$n.out"),
             err => $t->slurp("ctl$n.err") };
}

sub queued_on {
    my ($i) = @_;
    return scalar(() = $c->cli($i, 'ZRANGE', 'mdm:{FOM1}:q:FOM1', 0, -1)
                  =~ /\S+/g);
}

my $r1 = $c->spec . ' replicas=1 wait_timeout=300';
my $r = ctl($r1, 'enqueue', '--no-push', 'ProfileList', 'FOM1');
is $r->{rc}, 0, 'enqueue through the sentinels, replicas=1' or diag $r->{err};
is queued_on(1), 1, 'confirmed: on the replica too';

$c->signal('redis1', 'STOP');
$r = ctl($r1, 'enqueue', '--no-push', 'ProfileList', 'FOM1');
$c->signal('redis1', 'CONT');
isnt $r->{rc}, 0, 'replica stopped: the write is not confirmed';
like $r->{err}, qr/0 of replicas=1 confirmed it within 300 ms/,
    'and mdmctl says so' or diag $r->{err};

$r = ctl($c->spec, 'queue', 'FOM1');
is $r->{rc}, 0, 'a read through the sentinels' or diag $r->{err};

# --- SIGKILL of the primary: the next command waits for the promotion ------
ok MdmTest::wait_until(sub { queued_on(1) == 2 }, 10), 'replica caught up';
$c->kill_proc('redis0');
my $t0 = time;
$r = ctl($c->spec, 'enqueue', '--no-push', 'ProfileList', 'FOM1');
is $r->{rc}, 0, 'enqueue during the failover succeeds' or diag $r->{err};
diag(sprintf('mdmctl: kill -> enqueue done in %.0f ms', 1000 * (time - $t0)));
is $c->primary_port, $c->port(1), 'on the promoted replica';
is queued_on(1), 3, 'the command is on the new primary';

$t->finish;
done_testing;
