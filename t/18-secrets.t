#!/usr/bin/perl
# Secrets at rest (mdm_secret_key): UnlockToken and BootstrapToken sealed
# with AES-256-GCM in Redis, the raw TokenUpdate without the UnlockToken,
# GetBootstrapToken opened by the module, ClearPasscode and escrow opened by
# mdmctl; tampered, moved and unknown-key values refused; key rotation;
# plaintext values from before sealing still served; key file errors.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MIME::Base64;
use POSIX ();
use Time::HiRes qw(sleep time);
use MdmTest;
use MdmctlTest qw(plist_string pval);

my $BIN = MdmTest::root() . '/mdmctl/mdmctl';
plan skip_all => "build mdmctl first ($BIN)" unless -x $BIN;

my $t = MdmTest->new;
my $dir = $t->dir;
my $redis = $t->redis;
$ENV{MDM_REDIS} = 'unix:' . $t->redis_sock;
delete $ENV{MDM_SECRET_KEY};

sub enr { "mdm:{$_[0]}:enr:$_[0]" }
sub rget { $t->rcli_raw('--no-raw', 'HGET', enr($_[0]), $_[1]) }
sub hget { $redis->hget(enr($_[0]), $_[1]) }

my $nrun = 0;
sub ctl {
    my @args = @_;
    my $n = ++$nrun;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null' or die;
        open STDOUT, '>', "$dir/ctl$n.out" or die;
        open STDERR, '>', "$dir/ctl$n.err" or die;
        exec split(' ', $ENV{MDMCTL_WRAP} // ''), $BIN, @args
            or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return { rc => $? >> 8, out => $t->slurp("ctl$n.out"),
             err => $t->slurp("ctl$n.err") };
}

sub checkin {
    my ($cert, %kv) = @_;
    return $t->put('/mdm/checkin', MdmTest::plist(%kv), cert => $cert);
}

sub get_bootstrap {
    my ($udid) = @_;
    return checkin(lc $udid, MessageType => 'GetBootstrapToken',
                   UDID => $udid, AwaitingConfiguration => \0);
}

sub bootstrap_of {
    my ($r) = @_;
    return undef unless $r->{status} == 200 && length $r->{body};
    my $p = eval { plist_string($r->{body}) } or return undef;
    my $n = pval($p, 'BootstrapToken');
    return ref $n eq 'ARRAY' ? $n->[1] : undef;
}

# HUP, then wait for a new worker on Redis and the old one gone
sub reload {
    $t->mark_log;
    $t->signal_nginx('HUP');
    return $t->wait_for_log(qr/mdm: redis ready/)
        && $t->wait_for_log(qr/exited with code 0/);
}

# --- key file errors: nginx -t names the problem ---------------------------
my $good = ctl('secret', 'keygen', '--id', 'k1', "$dir/secret.key");
is $good->{rc}, 0, 'keygen: key file made' or diag $good->{err};
is sprintf('%o', (stat "$dir/secret.key")[2] & 0777), '600', 'keygen: 0600';
like $t->slurp('secret.key'), qr/^k1:[0-9a-f]{64}\n\z/, 'keygen: id:hex';

my %bad = (
    'missing' => [undef, qr/cannot open .*nokey: No such file/],
    'short key' => ["k1:abcd\n", qr/key "k1" is not 64 hex digits \(line 1\)/],
    'not hex' => ["# c\nk1:" . ('g' x 64) . "\n",
                  qr/key "k1" is not 64 hex digits \(line 2\)/],
    'bad id' => ["k 1:" . ('0' x 64) . "\n", qr/key id must be/],
    'twice' => ["a:" . ('0' x 64) . "\na:" . ('1' x 64) . "\n",
                qr/key id "a" given twice \(line 2\)/],
    'empty' => ["# nothing\n\n", qr/no key/],
);
for my $case (sort keys %bad) {
    my ($text, $re) = @{ $bad{$case} };
    my $f = "$dir/nokey";
    if (defined $text) {
        $t->spew('bad.key', $text);
        chmod 0600, "$dir/bad.key";
        $f = "$dir/bad.key";
    }
    $t->write_conf($t->conf(http => "mdm_secret_key $f;"));
    my $out = $t->nginx_test;
    like $out, qr/\[emerg\].*mdm_secret_key: $re/, "nginx -t: $case"
        or diag $out;
}

$t->write_conf($t->conf);
my $clear = 'no "mdm_secret_key": UnlockToken and BootstrapToken are '
    . 'stored in Redis in clear';
like $t->nginx_test, qr/\[warn\].*\Q$clear\E/,
    'no key: a warning, the server still starts';

chmod 0644, "$dir/secret.key";
$t->write_conf($t->conf(http => "mdm_secret_key $dir/secret.key;"));
like $t->nginx_test, qr/\[warn\].*secret\.key" is readable by group or others/,
    'loose key file mode: warned';
chmod 0600, "$dir/secret.key";
unlike $t->nginx_test, qr/\[warn\].*(readable by|in clear)/,
    'key file 0600: no warning';

# --- sealed at rest ---------------------------------------------------------
$t->start_nginx($t->conf(http => "mdm_secret_key $dir/secret.key;"));

my $unlock = "UNLOCK-TOKEN-\x00\x01\xfe-" . ('u' x 1200);
my $boot = "BOOT\x00\xffstrap-" . ('b' x 40);
for my $m ($t->authenticate('SEC1'),
           $t->token_update('SEC1', UnlockToken => { data => $unlock })) {
    is $t->put('/mdm/checkin', $m, cert => 'sec1')->{status}, 200,
        'SEC1 enrolls with an UnlockToken';
}
$t->enroll('SEC2', 'sec2');

my $u = hget('SEC1', 'unlock_token');
like $u, qr/^mdmS\x01\x02k1/s, 'unlock_token sealed with key k1';
is length($u), length($unlock) + 5 + 1 + 2 + 12 + 16,
    'sealed size: header, nonce, ciphertext, tag';
my $cli = rget('SEC1', 'unlock_token');
unlike $cli, qr/UNLOCK-TOKEN|uuuuuuuu/, 'redis-cli: no UnlockToken in clear';
my $raw = hget('SEC1', 'raw_token_update');
like $raw, qr/^bplist00/, 'raw TokenUpdate still a binary plist';
unlike $raw, qr/UNLOCK-TOKEN|uuuuuuuu/, 'raw TokenUpdate: no UnlockToken';
$t->spew('raw.bin', $raw);
my $xml = `plistutil -i $dir/raw.bin -o /dev/stdout 2>&1`;
unlike $xml, qr/UnlockToken/, 'raw TokenUpdate: UnlockToken key left out';
like $xml, qr/<key>PushMagic<\/key>\s*<string>PM-SEC1</, 'raw: the rest kept';

# a later TokenUpdate without UnlockToken keeps the sealed one
is $t->put('/mdm/checkin', $t->token_update('SEC1'), cert => 'sec1')
    ->{status}, 200, 'TokenUpdate without UnlockToken';
is hget('SEC1', 'unlock_token'), $u, 'sealed UnlockToken kept';

is checkin('sec1', MessageType => 'SetBootstrapToken', UDID => 'SEC1',
           BootstrapToken => { data => $boot })->{status}, 200,
    'SetBootstrapToken';
my $b = hget('SEC1', 'bootstrap_token');
like $b, qr/^mdmS\x01\x02k1/s, 'bootstrap_token sealed';
unlike rget('SEC1', 'bootstrap_token'), qr/strap-|bbbbbbbb/,
    'redis-cli: no BootstrapToken in clear';
isnt substr($b, 8, 12), substr($u, 8, 12), 'a fresh nonce per value';
my $r = get_bootstrap('SEC1');
is bootstrap_of($r), $boot, 'GetBootstrapToken: the original token';

# --- tampered, moved, unknown key: 503, one line, nothing misleading ------
sub refused_503 {
    my ($udid, $re, $name) = @_;
    $t->mark_log;
    my $r = get_bootstrap($udid);
    is $r->{status}, 503, "$name: 503";
    is $r->{headers}{'retry-after'}, '5', "$name: Retry-After";
    is $r->{body}, '', "$name: no body";
    $t->wait_for_log(qr/GetBootstrapToken/, 2);
    my @l = $t->mdm_errors_since_mark;
    is scalar(@l), 1, "$name: one log line" or diag explain \@l;
    like $l[0] // '', $re, "$name: the reason";
}

my $flip = $b;
substr($flip, -20, 1) = chr(ord(substr($flip, -20, 1)) ^ 1);
$redis->hset(enr('SEC1'), 'bootstrap_token', $flip);
my $bad = 'bootstrap_token does not open with key "k1": wrong key, '
    . 'tampered value';
refused_503('SEC1', qr/\[error\].*503 GetBootstrapToken id="SEC1".*\Q$bad/,
            'tampered');
$redis->hset(enr('SEC1'), 'bootstrap_token', $b);

$redis->hset(enr('SEC2'), 'bootstrap_token', $b);
refused_503('SEC2', qr/bootstrap_token does not open with key "k1"/,
            'copied to another device');

(my $trunc = $b) =~ s/^(.{30}).*/$1/s;
$redis->hset(enr('SEC2'), 'bootstrap_token', $trunc);
refused_503('SEC2', qr/bootstrap_token: sealed value truncated/, 'truncated');

# plaintext from before the key was configured is served as is
$redis->hset(enr('SEC2'), 'bootstrap_token', "OLD-PLAIN");
is bootstrap_of(get_bootstrap('SEC2')), 'OLD-PLAIN',
    'plaintext value from before sealing: served';

# --- mdmctl: ClearPasscode and escrow open the sealed UnlockToken -----------
$r = ctl('enqueue', 'ClearPasscode', 'SEC1');
isnt $r->{rc}, 0, 'ClearPasscode without the key file: refused';
is $r->{err}, 'mdmctl enqueue: SEC1: unlock_token is sealed with key "k1" '
    . 'but no secret key file is configured (give --secret-key FILE or '
    . "\$MDM_SECRET_KEY)\n", 'ClearPasscode without the key file: says why';
is $redis->zcard('mdm:{SEC1}:q:SEC1'), 0, 'nothing queued';

$r = ctl('enqueue', '--secret-key', "$dir/secret.key", 'ClearPasscode',
         'SEC1');
is $r->{rc}, 0, 'ClearPasscode with --secret-key' or diag $r->{err};
$r = $t->put('/mdm/connect', MdmTest::plist(UDID => 'SEC1', Status => 'Idle'),
             cert => 'sec1');
my $c = eval { plist_string($r->{body}) };
is_deeply pval($c, 'Command', 'UnlockToken'), ['data', $unlock],
    'the device gets ClearPasscode with the clear UnlockToken';

$r = ctl('escrow', '--secret-key', "$dir/secret.key", 'SEC1', 'unlock');
is $r->{rc}, 0, 'escrow unlock' or diag $r->{err};
is decode_base64($r->{out}), $unlock, 'escrow: base64 of the UnlockToken';
{
    local $ENV{MDM_SECRET_KEY} = "$dir/secret.key";
    $r = ctl('escrow', '--out', "$dir/boot.bin", 'SEC1', 'bootstrap');
    is $r->{rc}, 0, 'escrow bootstrap --out ($MDM_SECRET_KEY)'
        or diag $r->{err};
    is $t->slurp('boot.bin'), $boot, 'escrow: raw BootstrapToken in the file';
    $r = ctl('escrow', 'SEC2', 'unlock');
    like $r->{err}, qr/^mdmctl escrow: SEC2 has no unlock_token$/,
        'escrow: none stored';
}
$t->spew('other.key', "k1:" . ('ab' x 32) . "\n");
$r = ctl('escrow', '--secret-key', "$dir/other.key", 'SEC1', 'unlock');
isnt $r->{rc}, 0, 'escrow with another key under the same id: refused';
like $r->{err}, qr/unlock_token does not open with key "k1"/, 'says so';
is $r->{out}, '', 'nothing printed';

# --- rotation: k2 seals, k1 still opens --------------------------------------
is ctl('secret', 'keygen', '--id', 'k2', "$dir/secret.key")->{rc}, 0,
    'keygen appends k2';
is ctl('secret', 'check', "$dir/secret.key")->{out}, "k1\nk2 (seals)\n",
    'check: k2 seals';
ok reload(), 'nginx reloaded with k1 and k2';

is checkin('sec2', MessageType => 'SetBootstrapToken', UDID => 'SEC2',
           BootstrapToken => { data => "NEW-$boot" })->{status}, 200,
    'SetBootstrapToken after the rotation';
like hget('SEC2', 'bootstrap_token'), qr/^mdmS\x01\x02k2/s, 'sealed with k2';
is bootstrap_of(get_bootstrap('SEC2')), "NEW-$boot", 'k2 value opens';
is bootstrap_of(get_bootstrap('SEC1')), $boot, 'k1 value still opens';
$r = ctl('escrow', '--secret-key', "$dir/secret.key", 'SEC1', 'unlock');
is decode_base64($r->{out}), $unlock, 'CLI opens the k1 UnlockToken too';

# k1 dropped too early: the values it sealed are refused, with its id
my ($k2) = $t->slurp('secret.key') =~ /^(k2:.*\n)/m;
$t->spew('secret.key', $k2);
ok reload(), 'nginx reloaded with k2 only';
my $gone = 'bootstrap_token is sealed with key "k1", which is not in the '
    . 'secret key file';
refused_503('SEC1', qr/\Q$gone/, 'unknown key id');
is bootstrap_of(get_bootstrap('SEC2')), "NEW-$boot", 'k2 value still opens';

# a broken key file on reload: nginx keeps the running configuration
$t->spew('secret.key', "k2:zz\n");
$t->mark_log;
$t->signal_nginx('HUP');
ok $t->wait_for_log(qr/\[emerg\].*mdm_secret_key/), 'bad key file on reload';
is bootstrap_of(get_bootstrap('SEC2')), "NEW-$boot",
    'the old configuration still serves';

$t->{allow_alert} = qr/mdm_secret_key: key "k2" is not 64 hex digits/;
$t->finish;
done_testing;
