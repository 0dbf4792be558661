#!/usr/bin/perl
# mdmctl pushcert: customer key + CSR, the vendor-signed request for
# Apple's portal (decoded and its signature verified with openssl dgst),
# push certificate info (topic from the UID attribute), PEM <-> PKCS#12;
# wrong inputs fail with one clear line.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MIME::Base64 qw(decode_base64);
use MdmctlTest;

plan skip_all => "mdmctl not built (make -C mdmctl)"
    unless -x $MdmctlTest::BIN;

my $w = workdir();
my $topic = 'com.apple.mgmt.External.7d4e0c61-5a0b-4c55-9b7e-0f2d8a1c3e99';


sub pubkey_of_cert {
    run('openssl', 'x509', '-in', $_[0], '-noout', '-pubkey')->{out};
}

sub pubkey_of_key {
    run('openssl', 'pkey', '-in', $_[0], '-pubout', @_[1 .. $#_])->{out};
}

# ---- customer: key and CSR ------------------------------------------------------

my $r = mdmctl('pushcert', 'csr', '--key-out', "$w/push.key", '--csr-out',
               "$w/push.csr", '--cn', 'Example Push', '--email',
               'mdm@example.com', '--country', 'DE');
is $r->{rc}, 0, 'pushcert csr' or diag $r->{err};
is sprintf('%04o', (stat "$w/push.key")[2] & 07777), '0600', 'key is 0600';
$r = run('openssl', 'req', '-in', "$w/push.csr", '-noout', '-verify',
         '-subject', '-text');
is $r->{rc}, 0, 'CSR self-signature verifies';
like $r->{out}, qr/subject=C = DE, CN = Example Push, emailAddress = mdm\@example\.com/,
    'Keychain-style subject';
like $r->{out}, qr/Public-Key: \(2048 bit\)/, 'RSA 2048';
like $r->{out}, qr/sha256WithRSAEncryption/, 'SHA-256 signature';
is run('openssl', 'req', '-in', "$w/push.csr", '-noout', '-pubkey')->{out},
   pubkey_of_key("$w/push.key"), 'CSR carries the new key';

$r = mdmctl('pushcert', 'csr', '--key', "$w/push.key", '--csr-out',
            "$w/renew.csr");
is $r->{rc}, 0, 'CSR for an existing key' or diag $r->{err};
is run('openssl', 'req', '-in', "$w/renew.csr", '-noout', '-pubkey')->{out},
   pubkey_of_key("$w/push.key"), 'renewal CSR reuses the key';

# ---- vendor: sign the CSR ----------------------------------------------------------

issue_cert('root', subj => '/CN=Test Apple Root',
           ext => "basicConstraints=critical,CA:TRUE\n");
issue_cert('wwdr', ca => 'root', subj => '/CN=Test WWDR',
           ext => "basicConstraints=critical,CA:TRUE\n");
issue_cert('vendor', ca => 'wwdr', subj => '/CN=MDM Vendor: Example');

$r = mdmctl('pushcert', 'vendor-sign', '--csr', "$w/push.csr",
            '--vendor-cert', "$w/vendor.crt", '--vendor-key',
            "$w/vendor.key", '--chain', "$w/wwdr.crt", '--chain',
            "$w/root.crt", '--out', "$w/request.b64");
is $r->{rc}, 0, 'vendor-sign' or diag $r->{err};

my $b64 = slurp("$w/request.b64");
like $b64, qr{^[A-Za-z0-9+/]+=*$}, 'request is one base64 line';
my $xml = decode_base64($b64);
like $xml, qr/^<\?xml/, 'it decodes to an XML plist';
my $req = plist_string($xml);
is_deeply keys_of($req),
    [qw(PushCertCertificateChain PushCertRequestCSR PushCertSignature)],
    'exactly the three keys';
is pval($req, $_)->[0], 'string', "$_ is a string"
    for qw(PushCertCertificateChain PushCertRequestCSR PushCertSignature);

my $csr_der = decode_base64(pval($req, 'PushCertRequestCSR')->[1]);
run('openssl', 'req', '-in', "$w/push.csr", '-outform', 'DER', '-out',
    "$w/push.csr.der");
is $csr_der, slurp("$w/push.csr.der"), 'PushCertRequestCSR is the CSR DER';

my $chain = pval($req, 'PushCertCertificateChain')->[1];
my @pems = $chain =~ /(-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n)/sg;
is scalar(@pems), 3, 'chain has vendor, WWDR and root';
is $pems[0], slurp("$w/vendor.crt"), 'vendor certificate first';
is $pems[1], slurp("$w/wwdr.crt"), 'then the intermediate';
is $pems[2], slurp("$w/root.crt"), 'then the root';
ok !(grep { length($_) > 64 } split /\n/, $chain), 'PEM lines of 64 chars';

spew("$w/sig.bin", decode_base64(pval($req, 'PushCertSignature')->[1]));
spew("$w/csr.bin", $csr_der);
spew("$w/vendor.pub", pubkey_of_cert("$w/vendor.crt"));
$r = run('openssl', 'dgst', '-sha256', '-verify', "$w/vendor.pub",
         '-signature', "$w/sig.bin", "$w/csr.bin");
is $r->{rc}, 0, 'signature verifies over the CSR with the vendor cert';
like $r->{out}, qr/Verified OK/, 'openssl dgst: Verified OK';
$r = run('openssl', 'dgst', '-sha256', '-verify', "$w/vendor.pub",
         '-signature', "$w/sig.bin", "$w/push.csr");
isnt $r->{rc}, 0, 'signature does not verify over other bytes';
$r = run('openssl', 'pkeyutl', '-verifyrecover', '-pubin', '-inkey',
         "$w/vendor.pub", '-in', "$w/sig.bin", '-pkeyopt',
         'rsa_padding_mode:pkcs1', '-out', "$w/sig.rec");
is $r->{rc}, 0, 'RSA PKCS#1 v1.5 signature';

$r = mdmctl('pushcert', 'vendor-sign', '--csr', "$w/push.csr",
            '--vendor-cert', "$w/vendor.crt", '--vendor-key',
            "$w/vendor.key", '--digest', 'sha1', '--out', "$w/req-sha1.b64");
is $r->{rc}, 0, 'vendor-sign --digest sha1' or diag $r->{err};
my $req1 = plist_string(decode_base64(slurp("$w/req-sha1.b64")));
spew("$w/sig1.bin", decode_base64(pval($req1, 'PushCertSignature')->[1]));
is run('openssl', 'dgst', '-sha1', '-verify', "$w/vendor.pub", '-signature',
       "$w/sig1.bin", "$w/csr.bin")->{rc}, 0, 'SHA-1 signature verifies';
isnt run('openssl', 'dgst', '-sha256', '-verify', "$w/vendor.pub",
         '-signature', "$w/sig1.bin", "$w/csr.bin")->{rc}, 0,
    'and is not a SHA-256 one';
is scalar(() = pval($req1, 'PushCertCertificateChain')->[1] =~ /BEGIN/g), 1,
    'chain without --chain: vendor certificate only';

# ---- vendor-sign: wrong inputs ----------------------------------------------------

# A CSR whose body (and public key) is the customer's but whose signature
# was made with another key: rebuild the DER with a foreign signature.
sub der_elem {
    my ($buf, $off) = @_;
    my $len = ord substr($buf, $off + 1, 1);
    my $hdr = 2;
    if ($len & 0x80) {
        my $n = $len & 0x7f;
        $len = 0;
        $len = $len * 256 + ord substr($buf, $off + 2 + $_, 1) for 0 .. $n - 1;
        $hdr += $n;
    }
    return ($hdr, $len);
}

sub der_len {
    my ($n) = @_;
    return chr($n) if $n < 128;
    my $b = '';
    while ($n) { $b = chr($n & 255) . $b; $n >>= 8 }
    return chr(0x80 | length $b) . $b;
}

my ($oh) = der_elem($csr_der, 0);
my ($th, $tl) = der_elem($csr_der, $oh);
my $tbs = substr($csr_der, $oh, $th + $tl);
my ($ah, $al) = der_elem($csr_der, $oh + $th + $tl);
my $alg = substr($csr_der, $oh + $th + $tl, $ah + $al);
issue_cert('other', subj => '/CN=other');
spew("$w/tbs.der", $tbs);
run('openssl', 'dgst', '-sha256', '-sign', "$w/other.key", '-out',
    "$w/foreign.sig", "$w/tbs.der")->{rc} == 0 or die;
my $fsig = slurp("$w/foreign.sig");
my $body = $tbs . $alg . "\x03" . der_len(length($fsig) + 1) . "\x00" . $fsig;
spew("$w/foreign.csr", "\x30" . der_len(length $body) . $body);
$r = run('openssl', 'req', '-in', "$w/foreign.csr", '-inform', 'DER',
         '-noout', '-verify');
# openssl 3.0 'req -verify' exits 0 either way; its message tells
like $r->{err} . $r->{out}, qr/self-signature verify failure/,
    'openssl agrees the foreign CSR does not verify';

my @vs = ('pushcert', 'vendor-sign', '--vendor-cert', "$w/vendor.crt",
          '--vendor-key', "$w/vendor.key", '--out', "$w/bad.b64");
fails(1, qr/^mdmctl pushcert vendor-sign: \S+foreign\.csr: the CSR's signature does not verify with its own key \(signed by another key\?\)$/m,
      'CSR signed by another key', @vs, '--csr', "$w/foreign.csr");
ok !-e "$w/bad.b64", 'nothing written';
fails(1, qr/^mdmctl pushcert vendor-sign: \S+other\.key does not match the vendor certificate \S+vendor\.crt$/m,
      'vendor key does not match', 'pushcert', 'vendor-sign', '--csr',
      "$w/push.csr", '--vendor-cert', "$w/vendor.crt", '--vendor-key',
      "$w/other.key", '--out', "$w/bad.b64");
fails(1, qr/^mdmctl pushcert vendor-sign: \S+vendor\.crt: not a PEM or DER certificate request$/m,
      'certificate instead of CSR', @vs, '--csr', "$w/vendor.crt");
fails(2, qr/^mdmctl pushcert vendor-sign: --digest must be sha256 or sha1, not "md5"$/m,
      'bad digest', @vs, '--csr', "$w/push.csr", '--digest', 'md5');

run('openssl', 'pkey', '-in', "$w/vendor.key", '-aes256', '-passout',
    'pass:vendorpw', '-out', "$w/vendor-enc.key")->{rc} == 0 or die;
fails(1, qr/^mdmctl pushcert vendor-sign: \S+vendor-enc\.key: wrong password for the key$/m,
      'wrong vendor key password', 'pushcert', 'vendor-sign', '--csr',
      "$w/push.csr", '--vendor-cert', "$w/vendor.crt", '--vendor-key',
      "$w/vendor-enc.key", '--vendor-key-password', 'wrong', '--out',
      "$w/bad.b64");
$r = mdmctl('pushcert', 'vendor-sign', '--csr', "$w/push.csr",
            '--vendor-cert', "$w/vendor.crt", '--vendor-key',
            "$w/vendor-enc.key", '--vendor-key-password', 'vendorpw',
            '--out', "$w/enc.b64");
is $r->{rc}, 0, 'encrypted vendor key with its password' or diag $r->{err};

# ---- the issued push certificate: info ------------------------------------------

issue_cert('apns', subj => '/CN=Test Apple Push CA',
           ext => "basicConstraints=critical,CA:TRUE\n");
# Apple signs the customer's CSR; the subject carries the topic as UID
spew("$w/pushcert.ext", "[x]\nbasicConstraints=CA:FALSE\n"
     . "extendedKeyUsage=clientAuth\n");
$r = run('openssl', 'x509', '-req', '-in', "$w/push.csr", '-CA',
         "$w/apns.crt", '-CAkey', "$w/apns.key", '-CAcreateserial',
         '-days', 365, '-subj', "/UID=$topic/CN=APSP:7d4e0c61-5a0b-4c55-9b7e-0f2d8a1c3e99/C=US",
         '-extfile', "$w/pushcert.ext", '-extensions', 'x', '-out',
         "$w/MDM_Example_Certificate.pem");
is $r->{rc}, 0, 'test push certificate issued' or diag $r->{err};

$r = mdmctl('pushcert', 'info', '--cert', "$w/MDM_Example_Certificate.pem",
            '--key', "$w/push.key");
is $r->{rc}, 0, 'pushcert info' or diag $r->{err};
like $r->{out}, qr/^topic: +\Q$topic\E$/m, 'topic from the UID attribute';
like $r->{out}, qr/^subject: +C=US,CN=APSP:7d4e0c61-5a0b-4c55-9b7e-0f2d8a1c3e99,UID=\Q$topic\E$/m,
    'subject';
like $r->{out}, qr/^issuer: +CN=Test Apple Push CA$/m, 'issuer';
like $r->{out}, qr/^not before: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/m,
    'not before';
like $r->{out}, qr/^not after: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/m,
    'not after';
like $r->{out}, qr/^days left: +36[45]$/m, 'days left';
like $r->{out}, qr/^key: +matches$/m, 'key matches';
is $r->{err}, '', 'no warnings';

$r = mdmctl('pushcert', 'info', '--cert', "$w/MDM_Example_Certificate.pem",
            '--key', "$w/other.key");
is $r->{rc}, 1, 'info with a foreign key fails';
like $r->{out}, qr/^key: +does not match$/m, 'reported on stdout';
like $r->{err}, qr/^mdmctl pushcert info: \S+other\.key does not match the certificate$/,
    'key mismatch: error line';

fails(1, qr/^mdmctl pushcert info: \S+vendor\.crt has no UID \(topic\) attribute in its subject: not an MDM push certificate$/m,
      'certificate without UID', 'pushcert', 'info', '--cert',
      "$w/vendor.crt");

issue_cert('expired', ca => 'apns', subj => "/UID=$topic/CN=old",
           start => '20200101000000Z', end => '20210101000000Z');
$r = mdmctl('pushcert', 'info', '--cert', "$w/expired.crt", '--key',
            "$w/expired.key");
is $r->{rc}, 0, 'expired certificate: info still works';
like $r->{err}, qr/^mdmctl pushcert info: warning: push certificate expired on Jan  1 00:00:00 2021 GMT\n\z/,
    'expired certificate: one warning line';
like $r->{out}, qr/^days left: +-\d+$/m, 'negative days left';

# ---- conversions for the APNs sender -----------------------------------------------

$r = mdmctl('pushcert', 'p12', '--cert', "$w/MDM_Example_Certificate.pem",
            '--key', "$w/push.key", '--out', "$w/push.p12", '--password',
            'pass:p12pw');
is $r->{rc}, 0, 'pushcert p12' or diag $r->{err};
is sprintf('%04o', (stat "$w/push.p12")[2] & 07777), '0600', 'p12 is 0600';
$r = run('openssl', 'pkcs12', '-in', "$w/push.p12", '-passin', 'pass:p12pw',
         '-nokeys', '-clcerts', '-out', "$w/p12.crt");
is $r->{rc}, 0, 'openssl opens the PKCS#12';
is fingerprint("$w/p12.crt"), fingerprint("$w/MDM_Example_Certificate.pem"),
    'PKCS#12 holds the push certificate';

$r = mdmctl('pushcert', 'info', '--p12', "$w/push.p12", '--password',
            'p12pw');
is $r->{rc}, 0, 'info reads the PKCS#12' or diag $r->{err};
like $r->{out}, qr/^topic: +\Q$topic\E$/m, 'topic from the PKCS#12';
like $r->{out}, qr/^key: +matches$/m, 'its key matches';

$r = mdmctl('pushcert', 'pem', '--p12', "$w/push.p12", '--password',
            'p12pw', '--cert-out', "$w/back.crt", '--key-out',
            "$w/back.key");
is $r->{rc}, 0, 'pushcert pem' or diag $r->{err};
is fingerprint("$w/back.crt"), fingerprint("$w/MDM_Example_Certificate.pem"),
    'certificate back';
is pubkey_of_key("$w/back.key"), pubkey_of_key("$w/push.key"), 'key back';
is sprintf('%04o', (stat "$w/back.key")[2] & 07777), '0600',
    'key written 0600';

$r = mdmctl('pushcert', 'pem', '--p12', "$w/push.p12", '--password',
            'p12pw', '--cert-out', "$w/back2.crt", '--key-out',
            "$w/back2.key", '--key-password', 'keypw');
is $r->{rc}, 0, 'pushcert pem with an encrypted key';
like slurp("$w/back2.key"), qr/ENCRYPTED PRIVATE KEY/, 'key is encrypted';
is pubkey_of_key("$w/back2.key", '-passin', 'pass:keypw'),
   pubkey_of_key("$w/push.key"), 'encrypted key opens with its password';

# one file with certificate and key, as apnsd's --cert-dir takes it
$r = mdmctl('pushcert', 'pem', '--p12', "$w/push.p12", '--password',
            'p12pw', '--out', "$w/combined.pem");
is $r->{rc}, 0, 'pushcert pem --out' or diag $r->{err};
is sprintf('%04o', (stat "$w/combined.pem")[2] & 07777), '0600',
    'combined file is 0600';
is fingerprint("$w/combined.pem"),
   fingerprint("$w/MDM_Example_Certificate.pem"), 'combined: certificate';
is pubkey_of_key("$w/combined.pem"), pubkey_of_key("$w/push.key"),
   'combined: key';
$r = mdmctl('pushcert', 'info', '--cert', "$w/combined.pem");
like $r->{out}, qr/^key: +matches$/m, 'info checks the key in the same file';
$r = mdmctl('pushcert', 'p12', '--cert', "$w/combined.pem", '--out',
            "$w/combined.p12", '--password', 'c');
is $r->{rc}, 0, 'p12 from the combined file' or diag $r->{err};
fails(1, qr/^mdmctl pushcert p12: \S+MDM_Example_Certificate\.pem: not a PEM or DER private key$/m,
      'p12 without a key', 'pushcert', 'p12', '--cert',
      "$w/MDM_Example_Certificate.pem", '--out', "$w/nokey.p12",
      '--password', 'c');

fails(1, qr/^mdmctl pushcert pem: \S+push\.p12: wrong password for the PKCS#12 file$/m,
      'wrong PKCS#12 password', 'pushcert', 'pem', '--p12', "$w/push.p12",
      '--password', 'nope', '--cert-out', "$w/x.crt", '--key-out',
      "$w/x.key");
ok !-e "$w/x.key", 'nothing written';
fails(1, qr/^mdmctl pushcert info: \S+push\.p12: wrong password for the PKCS#12 file$/m,
      'info: wrong PKCS#12 password', 'pushcert', 'info', '--p12',
      "$w/push.p12", '--password', 'nope');
fails(1, qr/^mdmctl pushcert p12: \S+other\.key does not match the certificate \S+MDM_Example_Certificate\.pem$/m,
      'p12 from a foreign key', 'pushcert', 'p12', '--cert',
      "$w/MDM_Example_Certificate.pem", '--key', "$w/other.key", '--out',
      "$w/y.p12", '--password', 'x');
fails(1, qr/^mdmctl pushcert pem: \S+push\.csr: not a PKCS#12 file$/m,
      'not a PKCS#12', 'pushcert', 'pem', '--p12', "$w/push.csr",
      '--password', 'x', '--cert-out', "$w/x.crt", '--key-out', "$w/x.key");
fails(1, qr/^mdmctl pushcert p12: \S+push\.p12 exists \(use --force to replace it\)$/m,
      'existing PKCS#12', 'pushcert', 'p12', '--cert',
      "$w/MDM_Example_Certificate.pem", '--key', "$w/push.key", '--out',
      "$w/push.p12", '--password', 'x');

# a PKCS#12 made by openssl's defaults (AES, PBKDF2) also reads
run('openssl', 'pkcs12', '-export', '-in', "$w/MDM_Example_Certificate.pem",
    '-inkey', "$w/push.key", '-passout', 'pass:o', '-out',
    "$w/openssl.p12")->{rc} == 0 or die;
$r = mdmctl('pushcert', 'info', '--p12', "$w/openssl.p12", '--password', 'o');
is $r->{rc}, 0, 'openssl-made PKCS#12 reads' or diag $r->{err};

done_testing;
