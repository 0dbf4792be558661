#!/usr/bin/perl
# mdm-apnsd and Redis trouble: Redis restarting while pushes are in flight,
# Redis down at start, the function library missing; the shared address
# grammar (host names refused, username= with an ACL user); connects that
# never block the loop (nothing listening, a listener that never answers).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
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

is $t->stop_apnsd($p), 0, 'stopped';

# ---- the address grammar: host names refused, as in the module and mdmctl ------------
my $bin = $t->bin;
my $out = qx{$bin --check --redis localhost:6379 --cert $c->{pem} 2>&1};
is $? >> 8, 2, 'a host name is refused at start (exit 2)';
like $out, qr/redis: .*localhost.*not a host name/, '... with a clear message';
$out = qx{$bin --check --redis 'unix:relative.sock' --cert $c->{pem} 2>&1};
is $? >> 8, 2, 'a relative unix path is refused';
$out = qx{$bin --check --redis 'unix:@{[$t->redis_sock]} db=x' --cert $c->{pem} 2>&1};
is $? >> 8, 2, 'a bad db= is refused';
like $out, qr/db=x/, '... naming it';
$out = qx{$bin --check --redis 'unix:@{[$t->redis_sock]}' --redis-username u --cert $c->{pem} 2>&1};
is $? >> 8, 2, 'a username without a password is refused';

# ---- username= : an ACL user of its own ------------------------------------------------------------
my $r = $t->redis;
# the least privilege of apnsd/README.md: its own commands and those its
# Functions call (Redis checks those against the caller's ACL too)
my @acl = split ' ', '-@all +fcall +fcall_ro +hmget +hset +llen +lrange +smembers +blmove'
    . ' +select +ping +del +exists +get +hget +hgetall +hincrby +lpop +lpush +lrem +rpush'
    . ' +sadd +scard +set +srem +time +type +xadd';
$r->acl('SETUSER', 'pusher', 'reset', 'on', '>pusher-pw', '~mdm:*', 'resetchannels', @acl);
my $sock = $t->redis_sock;
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'acl',
                     opts => { redis => "unix:$sock username=pusher password=pusher-pw" });
ok $t->wait_for(sub { $t->apnsd_log('acl') =~ /redis: connected to unix:\S+ username=pusher/ }, 5),
    'username= : AUTH as the ACL user (the log shows the user, not the password)';
unlike $t->apnsd_log('acl'), qr/pusher-pw/, 'the password is never logged';
$t->enroll('ACL1', topic => $T);
$t->produce('ACL1');
ok $t->wait_for(sub { $t->enr('ACL1')->{push_ms} }, 10), 'pushes as the ACL user';
ok((grep { /user=pusher/ } split /\n/, $r->client('LIST')) >= 2,
   'both connections (commands and waiter) authenticated as pusher');
$t->enroll('ACL2', topic => $T);
$t->produce('ACL2');
ok $t->wait_for(sub { $t->enr('ACL2')->{push_ms} }, 10), 'and again (the waiter woke up)';
is $t->stop_apnsd($p), 0, 'stopped';
like $t->apnsd_log('acl'), qr/stopped \(sent=2 /, 'a clean stop (held pushes returned)';
unlike $t->apnsd_log('acl'), qr/NOPERM/, 'no command refused by the ACL';
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'badpw',
                     opts => { redis => "unix:$sock username=pusher password=wrong" });
ok $t->wait_for(sub { $t->apnsd_log('badpw') =~ /\[error\] redis: unix:\S+ username=pusher: AUTH: WRONGPASS/ }, 5),
    'a wrong password: one clear line';
my $c0 = $r->info('stats')->{total_connections_received};
$t->wait_for(sub { 0 }, 2);     # a measurement window, not a synchronisation
my $dc = $r->info('stats')->{total_connections_received} - $c0;
ok $dc <= 6, "failed AUTH backs off ($dc connects in 2 s)";
is $t->stop_apnsd($p), 0, 'stopped';
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'ovr',
                     opts => { redis => "unix:$sock username=pusher password=wrong",
                               'redis-password' => 'pusher-pw' });
ok $t->wait_for(sub { $t->apnsd_log('ovr') =~ /redis: connected to/ }, 5),
    'redis-password overrides password=';
is $t->stop_apnsd($p), 0, 'stopped';

# ---- TCP: the connect and the setup never block the loop ----------------------------------------
# nothing listening: refused asynchronously, logged once, retried
my $port = $t->port('nothing');
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'refused',
                     opts => { redis => "127.0.0.1:$port", 'log-level' => 'debug' });
ok $t->wait_for(sub { $t->apnsd_log('refused') =~ /\[error\] redis: 127\.0\.0\.1:$port: .*\(retrying\)/ }, 5),
    'TCP, nothing listening: logged';
ok $t->wait_for(sub { (() = $t->apnsd_log('refused') =~ /\[debug\] redis: 127\.0\.0\.1:$port:/g) >= 3 }, 10),
    '... and retried';
is $t->stop_apnsd($p), 0, 'stops promptly without Redis';
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'refused6',
                     opts => { redis => "[::1]:$port" });
ok $t->wait_for(sub { $t->apnsd_log('refused6') =~ /\[error\] redis: \[::1\]:$port: .*Connection refused.*\(retrying\)/ }, 5),
    'TCP over IPv6, nothing listening: logged';
is $t->stop_apnsd($p), 0, 'stopped';
# a real Redis over TCP (IPv4 literal), connected without blocking
my $tport = $t->port('redis-tcp');
$r->config('SET', 'port', $tport);
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'tcp', opts => { redis => "127.0.0.1:$tport" });
ok $t->wait_for(sub { $t->apnsd_log('tcp') =~ /redis: connected to 127\.0\.0\.1:$tport/ }, 5),
    'TCP: connected';
$t->enroll('TCP1', topic => $T);
$t->produce('TCP1');
ok $t->wait_for(sub { $t->enr('TCP1')->{push_ms} }, 10), 'TCP: pushes';
is $t->stop_apnsd($p), 0, 'stopped';
$r->config('SET', 'port', '0');
# a listener that never answers: the loop keeps running while the setup
# waits, and the setup gives up after redis-timeout
my $silent = IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1:0', ReuseAddr => 1)
    or die "listen: $!";
my $sport = $silent->sockport;
$p = $t->start_apnsd(cert => [$c->{pem}], name => 'silent',
                     opts => { redis => "127.0.0.1:$sport", 'redis-timeout' => '3s' });
ok $t->wait_for(sub { $t->apnsd_log('silent') =~ /started: name silent/ }, 5), 'started';
my $t0 = time;
kill 'USR1', $p;
ok $t->wait_for(sub { $t->apnsd_log('silent') =~ /\[info\] stats / }, 2),
    'the loop answers a signal while the Redis setup waits';
ok time - $t0 < 2, sprintf('... within %.2f s (redis-timeout is 3 s)', time - $t0);
ok $t->wait_for(sub { $t->apnsd_log('silent') =~ /no answer to the connect and setup within 3000ms/ }, 8),
    'the setup gives up after redis-timeout, with a clear line';
$t0 = time;
is $t->stop_apnsd($p, 'TERM', 10), 0, 'SIGTERM while connecting: exit 0';
close $silent;

$t->finish_apnsd;
$t->finish;
done_testing;
