#!/usr/bin/perl
# redis-scripts/users.acl in a real redis-server (aclfile): what each
# credential can and cannot do. Redis checks the commands a Function runs
# against the caller's ACL, so every path of the device functions is run
# as nginx's user, every push.lua function as the sender's, and the admin
# verbs as mdm-admin (mdmctl --user); then the refusals.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Digest::SHA qw(sha256_hex);
use POSIX ();
use Time::HiRes qw(sleep time);
use MdmTest;

my $BIN = MdmTest::root() . '/mdmctl/mdmctl';
plan skip_all => "build mdmctl first ($BIN)" unless -x $BIN;

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my $sock = $t->redis_sock;
my %pw = (nginx => 'nginx-Pw1', 'mdm-apnsd' => 'apnsd-Pw2',
          'mdm-admin' => 'admin-Pw3');
my $TOPIC = $MdmTest::TOPIC;


# --- the ACL file as shipped, passwords filled in ------------------------------
my $acl = $t->slurp(MdmTest::root() . '/redis-scripts/users.acl');
like $acl, qr/\@NGINX_SHA256\@/, 'shipped with placeholders';
my %ph = (NGINX => 'nginx', APNSD => 'mdm-apnsd', ADMIN => 'mdm-admin',
          WEBHOOKD => 'mdm-webhookd');
$acl =~ s/\@(\w+)_SHA256\@/sha256_hex($pw{$ph{$1}})/ge;

# nginx as the nginx user: username= in mdm_redis
$t->write_conf($t->conf(redis => "unix:$sock username=nginx password=$pw{nginx}"));
unlike $t->nginx_test, qr/username|invalid|unknown/i, 'mdm_redis takes username=';
$t->spew('users.acl', $acl);

my $pid = fork // die;
if (!$pid) {
    open STDOUT, '>', '/dev/null';
    exec 'redis-server', '--port', '0', '--unixsocket', $sock,
        '--unixsocketperm', '777', '--dir', $d, '--save', '',
        '--appendonly', 'no', '--logfile', "$d/redis.log",
        '--aclfile', "$d/users.acl" or die;
}
$t->{redis_pid} = $pid;

sub cli {
    my ($user, @args) = @_;
    my $pid = open(my $fh, '-|') // die;
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec 'redis-cli', '-s', $sock, ($user ? ('--user', $user, '--pass',
             $pw{$user}, '--no-auth-warning') : ()), @args;
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return $out;
}
ok wait_until(sub { -S $sock && cli('mdm-admin', 'PING') =~ /PONG/ }),
    'redis-server started with the ACL file';
like cli(undef, 'PING'), qr/NOAUTH|NOPERM|WRONGPASS/, 'default user: nothing';

for my $f ('mdm.lua', 'push.lua', 'metrics.lua') {
    my $out = qx{redis-cli -s $sock --user mdm-admin --pass $pw{'mdm-admin'} --no-auth-warning -x FUNCTION LOAD REPLACE < ${\ MdmTest::root() }/redis-scripts/$f 2>&1};
    unlike $out, qr/ERR|NOPERM/, "mdm-admin loads $f";
}

sub client {
    my ($user) = @_;
    require Redis;
    return Redis->new(sock => $sock, username => $user, password => $pw{$user},
                      reconnect => 2, every => 100_000);
}
my $admin = client('mdm-admin');
my $nginx = client('nginx');
my $apnsd = client('mdm-apnsd');

# call($client, @cmd): the reply, or "ERROR: <message>"
sub call {
    my ($c, @cmd) = @_;
    my $m = lc shift @cmd;
    my $r = eval { $c->$m(@cmd) };
    return "ERROR: $@" if $@;
    return $r;
}

# --- nginx: every path of the device functions ------------------------------------
my %sha = map { $_ => sha256_hex("cert-$_") } qw(A B C M X);
my $far = time + 86400 * 365;

sub checkin {
    my ($mt, $e, $cert, %o) = @_;
    my ($dv) = $e =~ /^([^:]+)/;
    my @kv = @{ $o{kv} // [] };
    return call($nginx, 'fcall', 'mdm_checkin', 3, "mdm:{$dv}:enr:$e",
        "mdm:cert:$sha{$cert}", 'mdm:events', $mt, $e, $dv,
        $e eq $dv ? 'Device' : 'User', $o{flags} // '', $o{not_after} // $far,
        $sha{$cert}, $o{deadline} // 0, Topic => $TOPIC, Raw => "<$mt/>", @kv);
}

sub report {
    my ($e, $cert, $status, $uuid, %o) = @_;
    my ($dv) = $e =~ /^([^:]+)/;
    return call($nginx, 'fcall', 'mdm_report', 3, "mdm:{$dv}:enr:$e",
        "mdm:cert:$sha{$cert}", 'mdm:events', 'Report', $e, $dv,
        $e eq $dv ? 'Device' : 'User', '', $far, $sha{$cert}, $o{deadline} // 0,
        $status, $uuid // '', "<plist>$status</plist>");
}

sub enqueue {
    my ($uuid, @ids) = @_;
    my $body = MdmTest::plist(CommandUUID => $uuid,
        Command => { dict => [RequestType => 'DeviceInformation'] });
    return call($admin, 'fcall', 'mdm_enqueue', 0, $body, 5, 0, 1, @ids);
}

sub ok_reply {
    my ($r, $status, $name) = @_;
    if (!ref $r) {
        fail $name;
        diag $r;
        return;
    }
    is $r->[0], $status, $name or diag explain $r;
}

# (Redis.pm reads FCALL_RO as FCALL RO: redis-cli for the read-only calls)
is cli('nginx', 'FCALL_RO', 'mdm_version', 0), MdmTest::lib_version() . "\n", 'nginx: FCALL_RO mdm_version';
ok_reply checkin('Authenticate', 'D1', 'A', kv => [SerialNumber => 'S1']), 200,
    'nginx: Authenticate';
ok_reply checkin('TokenUpdate', 'D1', 'A', kv => [Token => 'tok1', PushMagic => 'pm']),
    200, 'nginx: TokenUpdate';
ok_reply checkin('TokenUpdate', 'D1:U1', 'A', kv => [Token => 'tokU']), 200,
    'nginx: user-channel TokenUpdate';
ok_reply checkin('SetBootstrapToken', 'D1', 'A', kv => [BootstrapToken => 'bt',
    AwaitingConfiguration => 'false']), 200, 'nginx: SetBootstrapToken';
ok_reply checkin('GetBootstrapToken', 'D1', 'A'), 200, 'nginx: GetBootstrapToken';
ok_reply checkin('UserAuthenticate', 'D1:U2', 'A', flags => 'a'), 200,
    'nginx: UserAuthenticate accepted';
ok_reply checkin('UserAuthenticate', 'D1:U2', 'A'), 410, 'nginx: UserAuthenticate declined';
ok_reply checkin('Authenticate', 'D2', 'B', not_after => time + 86400), 200,
    'nginx: Authenticate, certificate expiring';
is $admin->hget('mdm:{D2}:enr:D2', 'cert_expiring'), '1', 'flagged';
ok_reply checkin('TokenUpdate', 'D2', 'B'), 200, 'nginx: TokenUpdate D2';
ok_reply checkin('TokenUpdate', 'D1', 'A', deadline => 1000), 503,
    'nginx: a late call is refused';

# mdm_device_auth (FCALL_RO): binding both ways, enabled, revocation list
sub device_auth {
    my ($cert) = @_;
    return cli('nginx', 'FCALL_RO', 'mdm_device_auth', 1,
               "mdm:cert:$sha{$cert}", $sha{$cert}, 0);
}
is device_auth('A'), "200\nD1\n\n", 'nginx: FCALL_RO mdm_device_auth';
like device_auth('X'), qr/^403\n\nc/, 'nginx: mdm_device_auth, unbound';

# commands: shared body (refs), Ack, NotNow, Idle, Expired, Missing, unknown
is_deeply enqueue('C1', 'D1', 'D2'), ['C1', 2, 0, 0], 'mdm-admin: mdm_enqueue';
enqueue($_, 'D1') for qw(C2 C3 C4);
ok_reply report('D1', 'A', 'Idle'), 200, 'nginx: Idle gets a command';
ok_reply report('D1', 'A', 'Acknowledged', 'C1'), 200, 'nginx: Acknowledged (refs - 1)';
ok_reply report('D2', 'B', 'Acknowledged', 'C1'), 200, 'nginx: Acknowledged (last ref)';
ok !$admin->exists('mdm:cmd:C1'), 'body released';
$admin->hset('mdm:cmdt:C3', 'D1', 'Queued|0|0|1|1000');
$admin->del('mdm:cmd:C4');
ok_reply report('D1', 'A', 'NotNow', 'C2'), 200, 'nginx: NotNow; Expired, Missing';
is $admin->hget('mdm:{D1}:res:D1:C3', 'status'), 'Expired', 'Expired result';
is $admin->hget('mdm:{D1}:res:D1:C4', 'status'), 'Missing', 'Missing result';
ok_reply report('D1', 'A', 'Idle'), 200, 'nginx: Idle: NotNow cleared';
ok_reply report('D1', 'A', 'Error', 'NOPE'), 200, 'nginx: result for an unknown UUID';
ok_reply report('D1:U1', 'A', 'Idle'), 200, 'nginx: user-channel report';
enqueue('C5', 'D1', 'D1:U1');
ok_reply checkin('Authenticate', 'D1', 'A'), 200,
    'nginx: re-Authenticate clears queues and user channels';
is $admin->hget('mdm:{D1}:res:D1:U1:C5', 'status'), 'Cleared', 'Cleared';
ok_reply checkin('SetBootstrapToken', 'D1', 'A', kv => [BootstrapToken => 'bt2']),
    200, 'nginx: SetBootstrapToken again';
enqueue('C6', 'D2');
ok_reply checkin('CheckOut', 'D2', 'B'), 200, 'nginx: CheckOut ends the queue';
is $admin->hget('mdm:{D2}:res:D2:C6', 'status'), 'CheckedOut', 'CheckedOut';
ok_reply checkin('Authenticate', 'D2', 'X'), 403,
    'nginx: another certificate refused (policy read)';

# policy, written by the admin, read by the functions nginx calls
like call($nginx, 'hset', 'mdm:policy', 'allow_rebind', '1'), qr/NOPERM/,
    'nginx cannot write mdm:policy';
is_deeply call($admin, 'fcall', 'mdm_conf_set', 0, 'allow_rebind', '1'),
    ['allow_rebind', '1', 'mdm:policy', 1], 'mdm-admin: mdm_conf_set';
ok_reply checkin('Authenticate', 'D2', 'X'), 200, 'nginx: rebind under allow_rebind';
call($admin, 'fcall', 'mdm_conf_set', 0, 'allow_rebind', '0');
$admin->hset('mdm:{D3}:enr:D3', 'type', 'Device', 'enabled', '1');
call($admin, 'fcall', 'mdm_conf_set', 0, 'migration', '1');
ok_reply report('D3', 'M', 'Idle'), 200, 'nginx: migration binds';
is $admin->get("mdm:cert:$sha{M}"), 'D3', 'bound by migration';
call($admin, 'fcall', 'mdm_conf_set', 0, 'migration', '0');
is_deeply call($nginx, 'hmget', 'mdm:policy', 'allow_rebind', 'migration'),
    ['0', '0'], 'nginx reads mdm:policy';
# DDM: the four endpoints, after the admin's declaration and assignment
call($admin, 'fcall', 'mdm_ddm_put', 0, '{"Type":"com.apple.configuration.'
     . 'softwareupdate.enforcement.specific","Identifier":"su","Payload":'
     . '{"TargetOSVersion":"26.1","TargetLocalDateTime":"2026-12-24T18:00:00"}}');
call($admin, 'fcall', 'mdm_ddm_set_add', 0, 'S', 'su');
like call($admin, 'fcall', 'mdm_ddm_assign', 0, 1, 'S', 'D3'), qr/"queued":1/,
    'mdm-admin: mdm_ddm_assign';
for my $ep ('tokens', 'declaration-items', 'declaration/configuration/su') {
    my $r = checkin('DeclarativeManagement', 'D3', 'M', kv => [Endpoint => $ep]);
    ok_reply $r, 200, "nginx: DeclarativeManagement $ep";
}
ok_reply checkin('DeclarativeManagement', 'D3', 'M', kv => [Endpoint => 'status',
    Data => '{"StatusItems":{"device":{"model":{"family":"iPad"}}},'
    . '"FullReport":true}']), 200, 'nginx: DeclarativeManagement status';
like cli('mdm-admin', 'FCALL_RO', 'mdm_ddm_status', 0, 'D3'), qr/iPad/,
    'mdm-admin: FCALL_RO mdm_ddm_status';
# the assignment's push request is not the sender tests' business
$admin->lrem('mdm:push:q', 0, 'D3');
$admin->srem('mdm:push:pending', 'D3');
my $gauges = call($nginx, 'fcall', 'mdm_metrics', 0);
is ref $gauges && $gauges->[0], '1', 'nginx runs mdm_metrics (the gauges)'
    or diag explain $gauges;

# --- nginx: what its credential cannot do ------------------------------------------
my @admin_fns = (
    ['mdm_enqueue', MdmTest::plist(CommandUUID => 'EVIL',
        Command => { dict => [RequestType => 'EraseDevice'] }), 5, 0, 1, 'D1'],
    ['mdm_push', 'D1'], ['mdm_cancel', 'D1', 'C2'], ['mdm_clear', 'D1'],
    ['mdm_unbind', 'D1'], ['mdm_conf_set', 'migration', '1'],
    ['mdm_forget', 'D1'], ['mdm_cancel_command', 'C2'],
    ['mdm_ddm_put', '{}'], ['mdm_ddm_check', '{}'], ['mdm_ddm_delete', 'su'],
    ['mdm_ddm_touch', 'su'], ['mdm_ddm_set_add', 'S', 'su'],
    ['mdm_ddm_set_remove', 'S', 'su'], ['mdm_ddm_assign', 1, 'S', 'D2'],
    ['mdm_ddm_unassign', 1, 'S', 'D1'], ['mdm_ddm_sync', 'D1'],
    ['mdm_ddm_fanout'],
);
for my $f (@admin_fns) {
    my ($fn, @a) = @$f;
    for my $who (['nginx', $nginx], ['mdm-apnsd', $apnsd]) {
        like call($who->[1], 'fcall', $fn, 0, @a),
            qr/NOPERM \Q$fn\E is an admin function/, "$who->[0] cannot call $fn";
    }
}
for my $c (['hset', 'mdm:conf', 'result_ttl', 1], ['del', 'mdm:policy'],
           ['hset', 'mdm:cmd:EVIL', 'body', 'x'], ['hset', 'mdm:cmd:C2', 'body', 'x'],
           ['zadd', 'mdm:{D1}:q:D1', 1, 'C2'], ['rpush', 'mdm:push:q', 'D1'],
           ['hset', 'mdm:ddm:decl:su', 'json', '{}'], ['sadd', 'mdm:ddm:set:S', 'x'],
           ['function', 'load', 'replace', "#!lua name=mdm\n"],
           ['function', 'flush'], ['eval', 'return 1', 0], ['keys', '*'],
           ['scan', 0], ['flushall'], ['config', 'get', 'dir'], ['acl', 'list'],
           ['xread', 'streams', 'mdm:events', '0'], ['get', 'other:key'],
           ['fcall', 'mdm_checkin', 3, 'mdm:policy', "mdm:cert:$sha{A}", 'mdm:events',
            'Authenticate', 'D1', 'D1', 'Device', '', $far, $sha{A}, 0]) {
    like call($nginx, @$c), qr/NOPERM|no permissions/, "nginx cannot: " . join(" ", grep { defined } @$c[0, 1]);
}
# what it can: the device keys its functions write, directly too
is call($nginx, 'hget', 'mdm:{D1}:enr:D1', 'token'), 'tok1',
    'nginx can read enrollment hashes (tokens included)';
is call($nginx, 'set', 'mdm:cert:forged', 'D1'), 'OK',
    'nginx can write bindings directly (documented)';
$admin->del('mdm:cert:forged');

# --- mdm-apnsd: the push.lua functions and the sender's commands ---------------------
my @push = ('mdm:push:q', 'mdm:push:pending');
my ($proc, $alive) = ('mdm:push:proc:s1', 'mdm:push:alive:s1');
is call($apnsd, 'fcall', 'mdm_push_version', 0), '1', 'apnsd: mdm_push_version';
is call($admin, 'fcall', 'mdm_push', 0, 'D1'), 1, 'mdm-admin: mdm_push';
is call($apnsd, 'fcall', 'mdm_push_beat', 2, $alive, 'mdm:push:senders', 'n1',
        30000, 's1', 1), 1, 'apnsd: mdm_push_beat';
is_deeply call($apnsd, 'fcall', 'mdm_push_claim', 5, @push, $proc, $alive,
               'mdm:push:senders', 10, 30000, 'n1', 's1', 0), ['D1'],
    'apnsd: mdm_push_claim';
is_deeply call($apnsd, 'hmget', 'mdm:{D1}:enr:D1', 'token', 'push_magic', 'topic'),
    ['tok1', 'pm', $TOPIC], 'apnsd: HMGET enrollment';
is call($apnsd, 'fcall', 'mdm_push_done', 5, $proc, 'mdm:{D1}:enr:D1', 'mdm:events',
        'mdm:push:stats', 'mdm:conf', 'D1', 1, 'tok1', 'ok', '', '200', 'id1',
        '', $TOPIC, 1, ''), 0, 'apnsd: mdm_push_done ok';
is call($apnsd, 'fcall', 'mdm_push_done', 5, $proc, 'mdm:{D1}:enr:D1', 'mdm:events',
        'mdm:push:stats', 'mdm:conf', 'D1', 0, 'tok1', 'bad_token', 'BadDeviceToken',
        '400', 'id2', '', $TOPIC, 1, ''), 1, 'apnsd: mdm_push_done bad_token';
is call($apnsd, 'fcall', 'mdm_push_topic', 3, 'mdm:push:stats', 'mdm:events',
        'mdm:conf', $TOPIC, 'stopped', 'BadCertificate', 's1', ''), 1,
    'apnsd: mdm_push_topic';
is call($apnsd, 'fcall', 'mdm_push_recover', 6, @push, 'mdm:push:proc:s2',
        'mdm:push:alive:s2', 'mdm:push:stats', 'mdm:push:senders', 'dead', 's2'), 0,
    'apnsd: mdm_push_recover';
like cli('mdm-apnsd', 'FCALL_RO', 'mdm_push_stats', 3, @push, 'mdm:push:stats'),
    qr/^queue\n/, 'apnsd: mdm_push_stats';
# the sweep, on the sender's timer: an expired item on a device that never
# polls, in two steps (budget 1 each)
enqueue($_, 'D1', 'D1:U1') for qw(S1 S2);
$admin->zadd('mdm:expiry', 1, $_) for qw(S1 S2);
is_deeply call($apnsd, 'fcall', 'mdm_sweep', 0, 1), [2, 1, 1],
    'apnsd: mdm_sweep, one command per call';
is_deeply call($apnsd, 'fcall', 'mdm_sweep', 0, 5), [2, 1, 0],
    'apnsd: mdm_sweep, the rest';
is $admin->hget('mdm:{D1}:res:D1:U1:S2', 'status'), 'Expired', 'swept: Expired';
ok !$admin->exists('mdm:cmd:S1') && !$admin->exists('mdm:cmd:S2'),
    'swept: bodies released';
for my $c (['blmove', 'mdm:push:q', 'mdm:push:q', 'LEFT', 'LEFT', '0.01'],
           ['lrange', $proc, 0, -1], ['smembers', 'mdm:push:senders'],
           ['llen', 'mdm:push:q'], ['hset', 'mdm:push:stats', 'queue', 0]) {
    unlike call($apnsd, @$c) // '', qr/^ERROR/, "apnsd: @$c[0, 1]";
}
for my $c (['hset', 'mdm:conf', 'events_maxlen', 1], ['hset', 'mdm:policy', 'migration', 1],
           ['set', "mdm:cert:$sha{X}", 'D1'], ['hset', 'mdm:cmd:C2', 'body', 'x'],
           ['fcall', 'mdm_checkin', 3, 'mdm:{D1}:enr:D1', "mdm:cert:$sha{A}",
            'mdm:events', 'Authenticate', 'D1', 'D1', 'Device', '', $far, $sha{A}, 0],
           ['function', 'flush'], ['keys', '*']) {
    like call($apnsd, @$c), qr/NOPERM|no permissions/, "apnsd cannot: " . join(" ", grep { defined } @$c[0, 1]);
}
is $admin->hget('mdm:conf', 'events_maxlen'), undef, 'mdm:conf untouched';

# --- mdm-admin through mdmctl --user ----------------------------------------------
sub ctl {
    my ($user, @args) = @_;
    my $out = qx{$BIN $args[0] --redis unix:$sock --user $user --password pass:$pw{$user} @args[1 .. $#args] 2>&1};
    return { rc => $? >> 8, out => $out };
}
my $r = ctl('mdm-admin', 'enqueue', '--no-push', 'ProfileList', 'D1');
is $r->{rc}, 0, 'mdmctl --user mdm-admin enqueue' or diag $r->{out};
$r = ctl('mdm-admin', 'conf', 'set', 'cert_warn_days', 10);
is $r->{rc}, 0, 'mdmctl --user mdm-admin conf set' or diag $r->{out};
$r = ctl('mdm-admin', 'devices', '--json');
is $r->{rc}, 0, 'mdmctl --user mdm-admin devices' or diag $r->{out};
$r = ctl('mdm-admin', 'events', '--from', 0, '--count', 1);
is $r->{rc}, 0, 'mdmctl --user mdm-admin events' or diag $r->{out};
$r = ctl('mdm-admin', 'escrow', 'D1', 'bootstrap');
is $r->{rc}, 0, 'mdmctl --user mdm-admin escrow' or diag $r->{out};
$r = ctl('mdm-admin', 'unbind', 'D3');
is $r->{out}, "D3: certificate $sha{M} unbound\n", 'mdmctl --user mdm-admin unbind';
for my $c (['conf', 'set', 'allow_rebind', 1], ['unbind', 'D1'],
           ['enqueue', '--no-push', 'EraseDevice', 'D1']) {
    $r = ctl('nginx', @$c);
    ok $r->{rc} == 1 && $r->{out} =~ /^mdmctl \w+: NOPERM/ && $r->{out} =~ tr/\n// == 1,
        "mdmctl --user nginx @$c[0, 1]: refused, one line" or diag $r->{out};
}
is $admin->hget('mdm:policy', 'allow_rebind'), '0', 'policy unchanged';

# --- nginx end to end with its credential ----------------------------------------------
$t->start_nginx;
$t->mark_log;
$t->enroll('E2E', 'e2e');
is $t->put('/mdm/checkin', $t->token_update('E2E', UserID => 'EU'),
           cert => 'e2e')->{status}, 200, 'user channel';
enqueue('E1', 'E2E');
$r = $t->put('/mdm/connect', MdmTest::plist(UDID => 'E2E', Status => 'Idle'), cert => 'e2e');
is $r->{status}, 200, 'e2e: Idle';
like $r->{body}, qr/E1/, 'e2e: command delivered';
$r = $t->put('/mdm/connect', MdmTest::plist(UDID => 'E2E', Status => 'Acknowledged',
             CommandUUID => 'E1'), cert => 'e2e');
is $r->{status}, 200, 'e2e: Acknowledged';
is $admin->hget('mdm:{E2E}:res:E2E:E1', 'status'), 'Acknowledged', 'e2e: result stored';
is $t->put('/mdm/checkin', $t->authenticate('E2E'), cert => 'e2e')->{status}, 200,
    'e2e: re-Authenticate';
is $t->put('/mdm/checkin', $t->authenticate('E2E'), cert => 'stranger')->{status}, 403,
    'e2e: rebind refused (policy read through the ACL)';
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'CheckOut', UDID => 'E2E'),
           cert => 'e2e')->{status}, 200, 'e2e: CheckOut';
unlike $t->log_since_mark, qr/NOPERM|mdm: 500/, 'no NOPERM, no 500';

# --- SCEP (issue 11): what nginx's credential may do ------------------------------------
is call($nginx, 'FCALL', 'mdm_scep_mint', 0, 60, '', 'aclchallenge1'), 1,
    'nginx: mdm_scep_mint (mdm_enroll)';
like call($nginx, 'FCALL', 'mdm_scep_mint', 0, 60, 'E2E', 'aclchallenge2'),
    qr/NOPERM/, 'nginx: a device renewal challenge is admin only';
my $iss = call($nginx, 'FCALL', 'mdm_scep_issue', 0, '19', 'aclchallenge1', '0',
               'ab' x 16, 'tx1', 'cd' x 32, 'abc1', '/CN=x', int(time) + 3600,
               'ef' x 32, 0);
is ref $iss ? $iss->[0] : $iss, 1, 'nginx: mdm_scep_issue';
like cli('nginx', 'FCALL_RO', 'mdm_scep_issued', 0), qr/^${\('cd' x 32)}$/m,
    'nginx: mdm_scep_issued';
like call($nginx, 'FCALL', 'mdm_scep_revoke', 0, 'abc1'), qr/NOPERM/,
    'nginx: mdm_scep_revoke is admin only';
is call($admin, 'FCALL', 'mdm_scep_revoke', 0, 'abc1'), 'cd' x 32,
    'mdm-admin: mdm_scep_revoke';

$t->finish;
done_testing;
