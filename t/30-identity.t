#!/usr/bin/perl
# Device identity without a TLS client certificate (Mdm-Signature, a
# certificate forwarded by a trusted proxy) and the binding rules that stop
# one device from acting as another, whatever the source.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use POSIX qw(strftime);
use MdmTest;
use MdmSign qw(mdm_signature escaped_pem rfc9440);

my $t = MdmTest->new;
my $d = $t->dir;
my $ca = "$d/ca.crt";

$t->make_ca('otherca', 'Another CA');
my %c = map { $_ => $t->device_cert($_) } qw(devA devB devC devM devN devR devX devY);
$c{other} = $t->device_cert('other', ca => 'otherca');
$c{email} = $t->device_cert('email', ext => 'noclient');
sub stamp { strftime('%y%m%d%H%M%SZ', gmtime(time + $_[0] * 86400)) }
$c{expired} = $t->device_cert('expired', not_before => stamp(-30),
                              not_after => stamp(-1));
$c{future} = $t->device_cert('future', not_before => stamp(2),
                             not_after => stamp(30));
$c{soon} = $t->device_cert('soon', days => 10);
$c{cn_ok} = $t->device_cert('cnok', cn => 'UDID-CN');
$c{renewed} = $t->device_cert('renewedA');

my $locs = <<'EOF';
        location = /mdm/checkin { mdm_checkin; }
        location = /mdm/connect { mdm_command; }
EOF
my $tls = <<EOF;
        ssl_certificate $d/server.crt;
        ssl_certificate_key $d/server.key;
        ssl_client_certificate $ca;
        mdm_topic $MdmTest::TOPIC;
EOF

$t->write_conf(<<EOF);
%%GLOBALS%%
events { worker_connections 256; }
http {
    %%HTTP_GLOBALS%%
    access_log off;
    mdm_redis unix:%%TESTDIR%%/redis.sock timeout=2s;
    mdm_device_ca $ca;

    # nginx verifies TLS; a signature is used when present (auto)
    server {
        listen 127.0.0.1:%%PORT_https%% ssl;
$tls        ssl_verify_client optional;
        mdm_identity auto;
$locs    }

    # behind a TLS-terminating load balancer: SignMessage only
    server {
        listen 127.0.0.1:%%PORT_sig%% ssl;
$tls        mdm_identity signature;
$locs    }

    # behind a trusted proxy that forwards the verified certificate
    server {
        listen 127.0.0.1:%%PORT_back%%;
        mdm_topic $MdmTest::TOPIC;
        mdm_identity header \$http_x_client_cert;
        mdm_trusted_proxy 127.0.0.1/32;
$locs    }
    server {
        listen 127.0.0.1:%%PORT_front%% ssl;
$tls        ssl_verify_client on;
        location / {
            proxy_pass http://127.0.0.1:%%PORT_back%%;
            proxy_set_header X-Client-Cert \$ssl_client_escaped_cert;
        }
    }
    server {
        listen 127.0.0.1:%%PORT_front9440%% ssl;
$tls        ssl_verify_client on;
        location / {
            proxy_pass http://127.0.0.1:%%PORT_back%%;
            proxy_set_header X-Client-Cert \$http_x_test_rfc9440;
        }
    }

    # the CA puts the device id in the certificate
    server {
        listen 127.0.0.1:%%PORT_cn%% ssl;
$tls        ssl_verify_client optional;
        mdm_require_id_in_cert on;
$locs    }
}
EOF
$t->start_nginx;
my $redis = $t->redis;
my $r;

# signed request, no TLS client certificate
sub sput {
    my ($port, $path, $body, $signer, %o) = @_;
    my %h = (%{ delete $o{headers} // {} });
    $h{'Mdm-Signature'} = mdm_signature($body, $signer, %o) if $signer;
    return $t->put($path, $body, port => $port, cert => undef, headers => \%h,
                   %{ delete $o{put} // {} });
}

# --- Mdm-Signature: SHA-256 DER, SHA-1 indefinite-length BER ----------------
$r = sput('sig', '/mdm/checkin', $t->authenticate('UDID-A'), $c{devA});
is $r->{status}, 200, 'signed Authenticate (SHA-256, DER)';
is $redis->hget('mdm:{UDID-A}:enr:UDID-A', 'cert'), $c{devA}{sha256},
    'bound to the signer certificate';
$r = sput('sig', '/mdm/checkin', $t->token_update('UDID-A'), $c{devA},
          md => 'sha1', ber => 1);
is $r->{status}, 200, 'signed TokenUpdate (SHA-1, indefinite-length BER)';
$r = sput('sig', '/mdm/connect', MdmTest::plist(UDID => 'UDID-A', Status => 'Idle'),
          $c{devA});
is $r->{status}, 200, 'signed command report';
# the same device over TLS + auto: the same binding
is $t->put('/mdm/connect', MdmTest::plist(UDID => 'UDID-A', Status => 'Idle'),
           cert => 'devA')->{status}, 200, 'TLS identity, same binding';
$t->enroll('UDID-B', 'devB');

# --- refusals: status, one log line, nothing stored ----------------------------
my $tuA = $t->token_update('UDID-A');
my $sigA = mdm_signature($tuA, $c{devA});
my @rows = (
    ['tampered body', sub { $t->put('/mdm/checkin', $tuA . ' ', port => 'sig',
        cert => undef, headers => { 'Mdm-Signature' => $sigA }) },
     403, qr/signature does not verify/],
    ['no signature in signature mode', sub { $t->put('/mdm/checkin', $tuA,
        port => 'sig', cert => undef) }, 403, qr/no Mdm-Signature header/],
    ['garbage base64', sub { $t->put('/mdm/checkin', $tuA, port => 'sig',
        cert => undef, headers => { 'Mdm-Signature' => '@@not base64!!' }) },
     403, qr/bad base64|not CMS/],
    ['signer from another CA', sub { sput('sig', '/mdm/checkin',
        $t->token_update('UDID-O'), $c{other}) }, 403,
     qr/not issued by a trusted CA/],
    ['expired certificate', sub { sput('sig', '/mdm/checkin',
        $t->authenticate('UDID-X'), $c{expired}) }, 403, qr/expired/],
    ['not yet valid certificate', sub { sput('sig', '/mdm/checkin',
        $t->authenticate('UDID-F'), $c{future}) }, 403, qr/not yet valid/],
    ['certificate without client-auth purpose', sub { sput('sig',
        '/mdm/checkin', $t->authenticate('UDID-E'), $c{email}) }, 403,
     qr/purpose|TLS client/],
    ['two signers', sub { sput('sig', '/mdm/checkin', $tuA,
        [$c{devA}, $c{devB}]) }, 403, qr/more than one signer/],
    ['auto: signature of another device than the TLS certificate', sub {
        $t->put('/mdm/checkin', $tuA, cert => 'devB',
                headers => { 'Mdm-Signature' => $sigA }) }, 403,
     qr/signer is not the TLS client certificate/],
    ['forwarded header from an untrusted address', sub {
        my $s = $t->connect(plain => 1, port => 'back', local => '127.0.0.2');
        my $r = $t->request($s, '/mdm/checkin', $tuA,
            headers => { 'X-Client-Cert' => escaped_pem($c{devA}) });
        close $s; $r }, 403, qr/not an mdm_trusted_proxy: ignored/],
);

# impersonation: A's valid certificate with B's id in every message
for my $m (['Authenticate', $t->authenticate('UDID-B')],
           ['TokenUpdate', $t->token_update('UDID-B')],
           ['CheckOut', MdmTest::plist(MessageType => 'CheckOut', UDID => 'UDID-B')],
           ['SetBootstrapToken', MdmTest::plist(MessageType => 'SetBootstrapToken',
               UDID => 'UDID-B', BootstrapToken => { data => 'evil' })],
           ['GetBootstrapToken', MdmTest::plist(MessageType => 'GetBootstrapToken',
               UDID => 'UDID-B')],
           ['UserAuthenticate', MdmTest::plist(MessageType => 'UserAuthenticate',
               UDID => 'UDID-B', UserID => 'U1')],
           ['user-channel TokenUpdate', $t->token_update('UDID-B', UserID => 'U1')]) {
    my ($name, $body) = @$m;
    push @rows, ["impersonation over TLS: $name", sub {
        $t->put('/mdm/checkin', $body, cert => 'devA') }, 403,
        qr/bound to another device \(UDID-A\)/];
    push @rows, ["impersonation by signature: $name", sub {
        sput('sig', '/mdm/checkin', $body, $c{devA}) }, 403,
        qr/bound to another device \(UDID-A\)/];
}
for my $st (['Idle'], ['Acknowledged', CommandUUID => 'X'],
            ['NotNow', CommandUUID => 'X']) {
    my $body = MdmTest::plist(UDID => 'UDID-B', Status => @$st);
    push @rows, ["impersonation in a command report: $st->[0]", sub {
        $t->put('/mdm/connect', $body, cert => 'devA') }, 403,
        qr/bound to another device \(UDID-A\)/];
}

for my $row (@rows) {
    my ($name, $do, $status, $log) = @$row;
    my $state = $t->redis_state;
    my $n = $t->events_len;
    $t->mark_log;
    my $r = $do->();
    is $r->{status}, $status, "$name: $status";
    is $r->{body}, '', "$name: no body";
    ok $t->wait_for_log($log, 2), "$name: reason logged"
        or diag $t->log_since_mark;
    my @l = grep { /mdm: 403 / } split /\n/, $t->log_since_mark;
    ok @l == 1 && $l[0] =~ /id="[^"]*" cert=\S+: .*client: 127\.0\.0\.\d/,
        "$name: one line with id, certificate hash, reason, client"
        or diag $t->log_since_mark;
    $t->state_unchanged($state, "$name: Redis unchanged");
    is $t->events_len, $n, "$name: no event";
}

# --- forwarded certificate from the trusted proxy ----------------------------
$r = $t->put('/mdm/connect', MdmTest::plist(UDID => 'UDID-A', Status => 'Idle'),
             port => 'front', cert => 'devA');
is $r->{status}, 200, 'forwarded certificate ($ssl_client_escaped_cert) accepted';
$r = $t->put('/mdm/connect', MdmTest::plist(UDID => 'UDID-A', Status => 'Idle'),
             port => 'front9440', cert => 'devB',
             headers => { 'X-Test-RFC9440' => rfc9440($c{devA}) });
is $r->{status}, 200, 'forwarded certificate (RFC 9440) accepted';
$r = $t->put('/mdm/connect', MdmTest::plist(UDID => 'UDID-A', Status => 'Idle'),
             port => 'front', cert => 'devB');
is $r->{status}, 403, 'forwarded certificate of another device refused';

# --- re-Authenticate with a new certificate --------------------------------------
# The binding (enrollment cert + mdm:cert:<sha>) stays in every state; only
# mdm:policy allow_rebind = 1 or an admin's mdm_unbind lets another
# certificate Authenticate for a bound device.
sub last_event { my $ev = $redis->xrevrange($_[0] // 'mdm:events', '+', '-',
                                            'COUNT', 1);
                 return { @{ $ev->[0][1] } } }
# security decisions go to mdm:audit
sub last_audit { last_event('mdm:audit') }
sub bound { $redis->hget("mdm:{$_[0]}:enr:$_[0]", 'cert') // '' }

# refused: 403, one line, a RebindRefused event, nothing else changed
sub rebind_refused {
    my ($name, $udid, $cert, $owner) = @_;
    # a device's refusals are audited once a minute: start a new minute
    $redis->del("mdm:{$udid}:refused");
    my $state = $t->redis_state;
    my $n = $redis->xlen('mdm:audit');
    $t->mark_log;
    my $r = $t->put('/mdm/checkin', $t->authenticate($udid), cert => $c{$cert});
    is $r->{status}, 403, "$name: 403";
    ok $t->wait_for_log(qr/mdm: 403 Authenticate id="\Q$udid\E" .*bound to another certificate \(mdm:policy allow_rebind off/, 2),
        "$name: logged" or diag $t->log_since_mark;
    is $redis->xlen('mdm:audit'), $n + 1, "$name: one audit event";
    my $ev = last_audit();
    is_deeply [@$ev{qw(type id cert bound)}],
        ['RebindRefused', $udid, $c{$cert}{sha256}, $c{$owner}{sha256}],
        "$name: RebindRefused event names both certificates";
    $t->state_unchanged($state, "$name: binding and enrollment unchanged");
    is bound($udid), $c{$owner}{sha256}, "$name: still bound to $owner";
    ok !$redis->exists("mdm:cert:$c{$cert}{sha256}"), "$name: $cert not bound";
    $r = $t->put('/mdm/checkin', $t->authenticate($udid), cert => $c{$cert});
    is $r->{status}, 403, "$name: again 403";
    is $redis->xlen('mdm:audit'), $n + 1,
        "$name: again within the minute: no second audit event";
}

# enabled enrollment
rebind_refused('enabled enrollment', 'UDID-A', 'renewed', 'devA');

# fresh Authenticate, before the TokenUpdate
is $t->put('/mdm/checkin', $t->authenticate('UDID-R'), cert => 'devR')->{status},
    200, 'UDID-R: Authenticate';
is $redis->hget('mdm:{UDID-R}:enr:UDID-R', 'enabled'), '0', 'UDID-R not enabled yet';
rebind_refused('between Authenticate and TokenUpdate', 'UDID-R', 'devX', 'devR');
is $t->put('/mdm/checkin', $t->token_update('UDID-R'), cert => 'devR')->{status},
    200, 'the real device completes its enrollment';
rebind_refused('after TokenUpdate', 'UDID-R', 'devX', 'devR');

# after a CheckOut
is $t->put('/mdm/checkin', MdmTest::plist(MessageType => 'CheckOut', UDID => 'UDID-R'),
           cert => 'devR')->{status}, 200, 'UDID-R: CheckOut';
is $redis->hget('mdm:{UDID-R}:enr:UDID-R', 'enabled'), '0', 'checked out';
rebind_refused('after CheckOut', 'UDID-R', 'devX', 'devR');
is $t->put('/mdm/checkin', $t->authenticate('UDID-R'), cert => 'devR')->{status},
    200, 'the real device re-enrolls with its own certificate';
is $t->put('/mdm/checkin', $t->token_update('UDID-R'), cert => 'devR')->{status},
    200, 'and its TokenUpdate';

# a caller with nginx's credential cannot sneak the old flags in: r/m in ARGV are ignored
my @a = ('Authenticate', 'UDID-R', 'UDID-R', 'Device', 'rma', 0,
         $c{devX}{sha256}, 0, Topic => $MdmTest::TOPIC);
my $reply = $t->fcall('mdm_checkin', ['mdm:{UDID-R}:enr:UDID-R',
                      "mdm:cert:$c{devX}{sha256}", 'mdm:events'], @a);
is $reply->[0], 403, 'flags r/m in ARGV grant nothing';
is bound('UDID-R'), $c{devR}{sha256}, 'binding kept';

# an admin unbinds: the next Authenticate binds the new certificate
is $t->fcall('mdm_unbind', [], 'UDID-R'), $c{devR}{sha256}, 'mdm_unbind returns the released hash';
my $ev = last_audit();
is_deeply [@$ev{qw(type id cert)}], ['Unbind', 'UDID-R', $c{devR}{sha256}], 'Unbind event';
is bound('UDID-R'), '', 'cert field removed';
ok !$redis->exists("mdm:cert:$c{devR}{sha256}"), 'owner key removed';
is $t->put('/mdm/connect', MdmTest::plist(UDID => 'UDID-R', Status => 'Idle'),
           cert => 'devR')->{status}, 403, 'unbound: the old certificate is refused';
is $t->fcall('mdm_unbind', [], 'UDID-R'), undef, 'unbind again: nothing bound';
eval { $t->fcall('mdm_unbind', [], 'NOPE') };
like $@, qr/unknown enrollment id NOPE/, 'unbind of an unknown id refused';
eval { $t->fcall('mdm_unbind', [], 'UDID-R:user') };
like $@, qr/not a device id/, 'unbind of a user channel refused';
is $t->put('/mdm/checkin', $t->authenticate('UDID-R'), cert => 'devY')->{status},
    200, 'after unbind: Authenticate with a new certificate binds it';
is bound('UDID-R'), $c{devY}{sha256}, 'bound to the new certificate';
rebind_refused('after unbind and a new Authenticate', 'UDID-R', 'devR', 'devY');

# mdm:policy allow_rebind = 1 (the module's mdm_allow_rebind is gone)
$redis->hset('mdm:policy', 'allow_rebind', '1');
$r = $t->put('/mdm/checkin', $t->authenticate('UDID-A'), cert => 'renewedA');
is $r->{status}, 200, 'allowed with mdm:policy allow_rebind 1';
is last_event()->{type}, 'Authenticate', 'Authenticate event';
is bound('UDID-A'), $c{renewed}{sha256}, 'rebound';
ok !$redis->exists("mdm:cert:$c{devA}{sha256}"), 'old certificate unbound';
is $redis->get("mdm:cert:$c{renewed}{sha256}"), 'UDID-A', 'new owner key';
is $t->put('/mdm/connect', MdmTest::plist(UDID => 'UDID-A', Status => 'Idle'),
           cert => 'devA')->{status}, 403, 'old certificate no longer works';
$r = $t->put('/mdm/checkin', $t->authenticate('UDID-A'), cert => 'devB');
is $r->{status}, 403, 'allow_rebind never takes a certificate bound to another device';
is bound('UDID-A'), $c{renewed}{sha256}, 'binding kept';
$redis->hset('mdm:policy', 'allow_rebind', '0');

# --- migration mode (mdm:policy migration) ------------------------------------------
$redis->hset('mdm:{UDID-M}:enr:UDID-M', 'type', 'Device', 'enabled', '1');
my $idle = MdmTest::plist(UDID => 'UDID-M', Status => 'Idle');
is $t->put('/mdm/connect', $idle, cert => 'devM')->{status}, 403,
    'unbound enrollment refused without migration mode';
$redis->hset('mdm:policy', 'migration', '1');
is $t->put('/mdm/connect', $idle, cert => 'devM')->{status}, 200,
    'migration mode binds on the next request';
ok scalar(grep { my %e = @{ $_->[1] }; $e{type} eq 'MigrationBind' && $e{id} eq 'UDID-M' }
          @{ $redis->xrevrange('mdm:audit', '+', '-', 'COUNT', 3) }),
    'MigrationBind event (mdm:audit)';
is $redis->hget('mdm:{UDID-M}:enr:UDID-M', 'cert'), $c{devM}{sha256}, 'bound once';
is $t->put('/mdm/connect', $idle, cert => 'devN')->{status}, 403,
    'a second certificate cannot bind';
$redis->hset('mdm:policy', 'migration', '0');
is $t->put('/mdm/connect', $idle, cert => 'devM')->{status}, 200,
    'bound device works without migration mode';

# --- device id in the certificate -------------------------------------------------
is $t->put('/mdm/checkin', $t->authenticate('UDID-CN'), cert => 'cnok',
           port => 'cn')->{status}, 200, 'id equals the certificate CN';
$t->mark_log;
is $t->put('/mdm/checkin', $t->authenticate('UDID-NOTCN'), cert => 'devC',
           port => 'cn')->{status}, 403, 'id not in the certificate: 403';
like $t->log_since_mark, qr/mdm_require_id_in_cert/, 'logged';

# --- expiry awareness -------------------------------------------------------------
is $t->put('/mdm/checkin', $t->authenticate('UDID-S'), cert => 'soon')->{status},
    200, 'certificate expiring in 10 days accepted';
is $redis->hget('mdm:{UDID-S}:enr:UDID-S', 'cert_expiring'), '1',
    'enrollment flagged';
my @evs = map { { @{ $_->[1] } } } @{ $redis->xrange('mdm:audit', '-', '+') };
ok scalar(grep { $_->{type} eq 'CertificateExpiring' && $_->{id} eq 'UDID-S' } @evs),
    'CertificateExpiring event';
is $redis->hget('mdm:{UDID-B}:enr:UDID-B', 'cert_expiring'), '0',
    'a fresh certificate is not flagged';

$t->finish;
done_testing;
