#!/usr/bin/perl
# mdmctl pki: CA, server and device certificates; a plain nginx accepts the
# server certificate (curl --cacert) and verifies the device certificate
# (ssl_verify_client on); wrong inputs fail with one clear line.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MdmctlTest;

plan skip_all => "mdmctl not built (make -C mdmctl)"
    unless -x $MdmctlTest::BIN;

my $w = workdir();
my $d = "$w/pki";
my $udid = '00008030-001A2B3C4D5E802E';

sub mode { sprintf '%04o', (stat $_[0])[2] & 07777 }

sub text { run('openssl', 'x509', '-in', $_[0], '-noout', '-text')->{out} }

# ---- CA ----------------------------------------------------------------------

my $r = mdmctl('pki', 'ca', '--dir', $d, '--cn', 'Test MDM CA');
is $r->{rc}, 0, 'pki ca' or diag $r->{err};
ok -f "$d/ca.crt" && -f "$d/ca.key", 'ca.crt and ca.key written';
is mode("$d/ca.key"), '0600', 'CA key is 0600';
is mode($d), '0700', 'new PKI directory is 0700';
my $t = text("$d/ca.crt");
like $t, qr/CA:TRUE/, 'CA basicConstraints';
like $t, qr/Certificate Sign, CRL Sign/, 'CA key usage';
like $t, qr/Subject: CN = Test MDM CA/, 'CA subject';

$r = mdmctl('pki', 'ca', '--dir', $d);
is $r->{rc}, 1, 'second pki ca refuses';
like $r->{err}, qr{^mdmctl pki ca: \S+/ca\.key exists \(use --force to replace it\)\n\z},
    'one-line error about the existing key';

# ---- server ------------------------------------------------------------------

$r = mdmctl('pki', 'server', '--dir', $d, '--name', 'localhost',
            '--name', 'mdm.test', '--ip', '127.0.0.1', '--ip', '::1');
is $r->{rc}, 0, 'pki server' or diag $r->{err};
is mode("$d/server.key"), '0600', 'server key is 0600';
$t = text("$d/server.crt");
like $t, qr/Subject: CN = localhost/, 'server CN is the first name';
like $t, qr/DNS:localhost, DNS:mdm\.test, IP Address:127\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1/,
    'SAN lists names and addresses';
like $t, qr/Extended Key Usage: *\n\s*TLS Web Server Authentication\n/,
    'server EKU is serverAuth only';
like $t, qr/Key Usage: critical\n\s*Digital Signature, Key Encipherment/,
    'server key usage';
like $t, qr/CA:FALSE/, 'server is not a CA';
$r = run('openssl', 'verify', '-purpose', 'sslserver', '-CAfile', "$d/ca.crt",
         "$d/server.crt");
is $r->{rc}, 0, 'server cert verifies for sslserver' or diag $r->{out};

my $days = run('openssl', 'x509', '-in', "$d/server.crt", '-noout',
               '-checkend', 826 * 86400);
is $days->{rc}, 1, 'server cert validity within Apple limit (825 days)';

# ---- device ------------------------------------------------------------------

$r = mdmctl('pki', 'device', '--dir', $d, '--id', $udid,
            '--p12-password', 'pass:s3cret');
is $r->{rc}, 0, 'pki device' or diag $r->{err};
is mode("$d/$udid.key"), '0600', 'device key is 0600';
is mode("$d/$udid.p12"), '0600', 'device PKCS#12 is 0600';
$t = text("$d/$udid.crt");
like $t, qr/Subject: CN = \Q$udid\E\n/, 'device id in the subject CN';
like $t, qr/Extended Key Usage: *\n\s*TLS Web Client Authentication\n/,
    'device EKU is clientAuth';
$r = run('openssl', 'verify', '-purpose', 'sslclient', '-CAfile',
         "$d/ca.crt", "$d/$udid.crt");
is $r->{rc}, 0, 'device cert verifies for sslclient' or diag $r->{out};

$r = run('openssl', 'pkcs12', '-in', "$d/$udid.p12", '-passin', 'pass:s3cret',
         '-nokeys', '-clcerts', '-out', "$w/p12cert.pem");
is $r->{rc}, 0, 'PKCS#12 opens with its password' or diag $r->{err};
is fingerprint("$w/p12cert.pem"), fingerprint("$d/$udid.crt"),
    'PKCS#12 holds the device certificate';
$r = run('openssl', 'pkcs12', '-in', "$d/$udid.p12", '-passin', 'pass:s3cret',
         '-nocerts', '-nodes', '-out', "$w/p12key.pem");
my $pub1 = run('openssl', 'pkey', '-in', "$w/p12key.pem", '-pubout')->{out};
my $pub2 = run('openssl', 'x509', '-in', "$d/$udid.crt", '-noout',
               '-pubkey')->{out};
ok $pub1 && $pub1 eq $pub2, 'PKCS#12 key matches the certificate';
$r = run('openssl', 'pkcs12', '-in', "$d/$udid.p12", '-passin', 'pass:wrong',
         '-nokeys');
isnt $r->{rc}, 0, 'PKCS#12 does not open with a wrong password';

# without a password one is generated and kept next to the file
$r = mdmctl('pki', 'device', '--dir', $d, '--id', 'DEV2');
is $r->{rc}, 0, 'pki device without password' or diag $r->{err};
my $pw = slurp("$d/DEV2.p12.pass");
like $pw, qr/^[0-9a-f]{32}$/, 'random password written';
is mode("$d/DEV2.p12.pass"), '0600', 'password file is 0600';
$r = run('openssl', 'pkcs12', '-in', "$d/DEV2.p12", '-passin', "pass:$pw",
         '-nokeys');
is $r->{rc}, 0, 'PKCS#12 opens with the generated password';

# EC keys work too
$r = mdmctl('pki', 'device', '--dir', $d, '--id', 'DEV3', '--key-type',
            'ec256', '--p12-password', 'x', '--p12-modern');
is $r->{rc}, 0, 'EC device with modern PKCS#12' or diag $r->{err};
like text("$d/DEV3.crt"), qr/id-ecPublicKey/, 'EC key';

# ---- plain nginx: server cert accepted, device cert verified ----------------

my $ngx = start_nginx(<<EOF);
    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name localhost;
        ssl_certificate $d/server.crt;
        ssl_certificate_key $d/server.key;
        ssl_client_certificate $d/ca.crt;
        ssl_verify_client on;
        location / { return 200 "ok \$ssl_client_s_dn\\n"; }
    }
EOF
my $port = $ngx->{port};
my @curl = ('curl', '-sS', '--max-time', '10', '--cacert', "$d/ca.crt",
            '--resolve', "localhost:$port:127.0.0.1");

$r = run(@curl, '--cert', "$d/$udid.crt", '--key', "$d/$udid.key",
         "https://localhost:$port/");
is $r->{rc}, 0, 'curl --cacert accepts the server certificate'
    or diag $r->{err};
is $r->{out}, "ok CN=$udid\n", 'device certificate verified by nginx';

$r = run(@curl, '--cert', "$d/$udid.crt", '--key', "$d/$udid.key",
         "https://127.0.0.1:$port/");
is $r->{out}, "ok CN=$udid\n", 'IP SAN accepted';

$r = run(@curl, '-o', '/dev/null', '-w', '%{http_code}',
         "https://localhost:$port/");
is $r->{out}, '400', 'no client certificate: 400 (ssl_verify_client on)';

# a device certificate from another CA is refused
my $o = "$w/other";
mdmctl('pki', 'ca', '--dir', $o);
mdmctl('pki', 'device', '--dir', $o, '--id', 'ALIEN', '--p12-password', 'x');
$r = run(@curl, '-o', '/dev/null', '-w', '%{http_code}', '--cert',
         "$o/ALIEN.crt", '--key', "$o/ALIEN.key", "https://localhost:$port/");
is $r->{out}, '400', 'device cert of another CA refused';

# the other CA does not vouch for our server
$r = run('curl', '-sS', '--max-time', '10', '--cacert', "$o/ca.crt",
         '--resolve', "localhost:$port:127.0.0.1", "https://localhost:$port/");
is $r->{rc}, 60, 'curl with the wrong CA rejects the server';

stop_nginx($ngx);

# ---- wrong inputs ------------------------------------------------------------


fails(2, qr/^mdmctl pki server: not an IP address: "999\.1\.1\.1"$/m,
      'bad IP', 'pki', 'server', '--dir', $d, '--name', 'x', '--ip',
      '999.1.1.1');
fails(2, qr/^mdmctl pki server: not a DNS name: "a b"$/m,
      'bad name', 'pki', 'server', '--dir', $d, '--name', 'a b');
fails(2, qr/--days must be 1\.\.825/, 'server validity over Apple limit',
      'pki', 'server', '--dir', $d, '--name', 'x', '--days', 1000);
fails(2, qr/^mdmctl pki device: --id must be/m, 'id with a slash',
      'pki', 'device', '--dir', $d, '--id', '../x');
fails(2, qr/^mdmctl pki device: unknown option --bogus$/m, 'unknown option',
      'pki', 'device', '--dir', $d, '--bogus');
fails(2, qr/^mdmctl: unknown command "frob"/m, 'unknown command', 'frob');
fails(1, qr/^mdmctl pki server: \S+nope\/ca\.crt: No such file or directory$/m,
      'missing CA', 'pki', 'server', '--dir', "$w/nope", '--name', 'x');
fails(1, qr/^mdmctl pki device: \S+\/\Q$udid\E\.key exists/m,
      'existing device key', 'pki', 'device', '--dir', $d, '--id', $udid,
      '--p12-password', 'x');

# a CA key that does not belong to the CA certificate
system('cp', "$o/ca.key", "$d/ca.key") == 0 or die;
fails(1, qr{^mdmctl pki server: \S+/ca\.key does not match the certificate \S+/ca\.crt$}m,
      'CA key does not match', 'pki', 'server', '--dir', $d, '--name', 'x',
      '--force');

# an encrypted CA key needs its password
my $e = "$w/enc";
$r = mdmctl('pki', 'ca', '--dir', $e, '--key-password', 'pass:capw');
is $r->{rc}, 0, 'CA with an encrypted key';
like slurp("$e/ca.key"), qr/ENCRYPTED PRIVATE KEY/, 'CA key is encrypted';
fails(1, qr/^mdmctl pki server: \S+ca\.key: wrong password for the key$/m,
      'wrong CA password', 'pki', 'server', '--dir', $e, '--name', 'x',
      '--ca-password', 'nope');
fails(1, qr/^mdmctl pki server: \S+ca\.key: key is encrypted, give its password$/m,
      'missing CA password', 'pki', 'server', '--dir', $e, '--name', 'x');
$r = mdmctl('pki', 'server', '--dir', $e, '--name', 'x', '--ca-password',
            'env:MDMCTL_TEST_PW');
is $r->{rc}, 1, 'unset password variable';
{
    local $ENV{MDMCTL_TEST_PW} = 'capw';
    $r = mdmctl('pki', 'server', '--dir', $e, '--name', 'x', '--ca-password',
                'env:MDMCTL_TEST_PW');
    is $r->{rc}, 0, 'CA password from the environment' or diag $r->{err};
}

done_testing;
