#!/usr/bin/perl
# mdm-apnsd and Redis trouble: Redis restarting while pushes are in flight,
# Redis down at start, the function library missing.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use ApnsTest;

my $t = ApnsTest->new;
my $c = $t->push_cert('push1');
my $T = $c->{topic};

# Redis with AOF, so a restart keeps the data set (and the functions)
$t->stop_redis;
$t->start_redis(aof => 1);
sub restart_redis_keep {
    $t->stop_redis;
    $t->start_redis(aof => 1, no_functions => 1);
}

sub pushed { my $n = $t->token_counts; !grep { !$n->{ $t->token_of($_) } } @_ }

# ---- Redis goes away while answers are on their way -----------------------------
$t->start_mock(delay => 1000);
my @ids = map { "R$_" } 1 .. 100;
$t->enroll_many($T, @ids);
my $p = $t->start_apnsd(cert => [$c->{pem}]);
$t->produce_many(@ids);
ok $t->wait_for(sub { pushed(@ids) }, 10), 'all 100 in flight';
$t->stop_redis;
ok $t->wait_for(sub { $t->apnsd_log =~ /redis: connection lost/ }, 5),
    'lost connection noticed when the answers came';
sleep 0.5;
ok kill(0, $p), 'sender keeps running without Redis';
$t->start_redis(aof => 1, no_functions => 1);
ok $t->wait_for(sub { $t->apnsd_log =~ /redis: connected to .* again/ }, 10), 'reconnected';
ok $t->wait_for(sub { !grep { !$t->enr($_)->{push_ms} } @ids }, 10),
    'outcomes kept during the outage are written after it';
ok $t->wait_for(sub { $t->llen('mdm:push:proc:a1') == 0 }, 5), 'processing list empty';
is scalar(grep { $_->{result} eq 'ok' } $t->events(type => 'push')), 100, 'one ok event per push';
is scalar $t->requests, 100, 'nothing sent twice';

# ---- Redis down when the sender starts -----------------------------------------------
is $t->stop_apnsd($p), 0, 'stopped';
$t->stop_redis;
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'late');
ok $t->wait_for(sub { $t->apnsd_log('late') =~ /\[error\] redis: unix:\S+: .*\(retrying\)/ }, 5),
    'Redis down at start: logged once, retrying';
sleep 0.5;
my $errs = () = $t->apnsd_log('late') =~ /\[error\] redis:/g;
is $errs, 1, 'not one line per attempt';
$t->start_redis(aof => 1, no_functions => 1);
$t->enroll('LATE1', topic => $T);
$t->produce('LATE1');
ok $t->wait_for(sub { $t->enr('LATE1')->{push_ms} }, 10), 'works once Redis is there';

# ---- function library missing ---------------------------------------------------------------------
is $t->stop_apnsd($p), 0, 'stopped';
$t->redis->function('DELETE', 'mdm_push');
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'nolib');
ok $t->wait_for(sub { $t->apnsd_log('nolib') =~ /mdm_push_version \(is redis-scripts\/push\.lua loaded\?\)/ }, 5),
    'missing library: clear log line';
$t->load_functions;
$t->enroll('LIB1', topic => $T);
$t->produce('LIB1');
ok $t->wait_for(sub { $t->enr('LIB1')->{push_ms} }, 10), 'works once the library is loaded';

$t->finish_apnsd;
$t->finish;
done_testing;
