#!/usr/bin/perl
# mdmctl profile: enrollment profiles parse with plistutil, hold exactly
# the expected keys with the right types, are removable, their identity
# PKCS#12 opens with its password, their CMS signature verifies with
# openssl cms -verify; wrong inputs fail with one clear line.

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
my $udid = 'A1B2C3D4-1111-2222-3333-444455556666';
my $topic = 'com.apple.mgmt.External.2a1b4c3e-8f9d-4b1e-9a55-6c3b1d2e7f00';
my $UUID = qr/^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$/;

for my $c (['pki', 'ca', '--dir', $d],
           ['pki', 'server', '--dir', $d, '--name', 'mdm.test'],
           ['pki', 'device', '--dir', $d, '--id', $udid, '--p12-password',
            'pw1'])
{
    my $r = mdmctl(@$c);
    die "@$c: $r->{err}" if $r->{rc};
}

# a push certificate with the topic in its UID, from a stand-in "Apple" CA
issue_cert('apple', subj => '/CN=Apple Test Push CA',
           ext => "basicConstraints=critical,CA:TRUE\n"
                . "keyUsage=critical,keyCertSign\n");
issue_cert('push', ca => 'apple', subj => "/UID=$topic/CN=APSP:test/C=US");
issue_cert('nouid', ca => 'apple', subj => '/CN=no topic here');
issue_cert('expired', ca => 'apple', subj => "/UID=$topic/CN=old",
           start => '20200101000000Z', end => '20210101000000Z');

my @base = ('profile', 'create', '--url', 'https://mdm.test:8443/',
            '--p12', "$d/$udid.p12", '--p12-password', 'pw1');

sub check_types {
    my ($node, $spec, $name) = @_;
    is_deeply keys_of($node), [sort keys %$spec], "$name: exactly the keys"
        or diag explain keys_of($node);
    for my $k (sort keys %$spec) {
        is pval($node, $k)->[0], $spec->{$k}, "$name: $k is $spec->{$k}";
    }
}

my %common = (PayloadType => 'string', PayloadVersion => 'integer',
              PayloadIdentifier => 'string', PayloadUUID => 'string',
              PayloadDisplayName => 'string');

# ---- PKCS#12 identity, root CA, push certificate topic --------------------

my $r = mdmctl(@base, '--push-cert', "$w/push.crt", '--ca-cert', "$d/ca.crt",
               '--server-cert', "$d/server.crt", '--org', 'Example Org',
               '--name', 'Example MDM', '--out', "$w/p1.mobileconfig");
is $r->{rc}, 0, 'profile create' or diag $r->{err};
is $r->{err}, '', 'no warnings';
is sprintf('%04o', (stat "$w/p1.mobileconfig")[2] & 07777), '0600',
    'profile with a PKCS#12 password is 0600';

my $p = plist_file("$w/p1.mobileconfig");
check_types($p, { %common, PayloadOrganization => 'string',
                  PayloadRemovalDisallowed => 'boolean',
                  PayloadContent => 'array' }, 'top level');
is pval($p, 'PayloadType')->[1], 'Configuration', 'PayloadType';
is pval($p, 'PayloadVersion')->[1], 1, 'PayloadVersion';
is pval($p, 'PayloadIdentifier')->[1], 'test.mdm.enroll',
    'identifier derived from the host';
is pval($p, 'PayloadRemovalDisallowed')->[1], 0, 'removable';
is pval($p, 'PayloadOrganization')->[1], 'Example Org', 'organisation';
is pval($p, 'PayloadDisplayName')->[1], 'Example MDM', 'display name';
like pval($p, 'PayloadUUID')->[1], $UUID, 'top-level UUID';

my @pl = @{ pval($p, 'PayloadContent')->[1] };
is scalar(@pl), 3, 'three payloads';
is_deeply [map { pval($_, 'PayloadType')->[1] } @pl],
    ['com.apple.security.root', 'com.apple.security.pkcs12', 'com.apple.mdm'],
    'root CA, identity, MDM (in install order)';

my %uuids = map { pval($_, 'PayloadUUID')->[1] => 1 } @pl, $p;
is scalar(keys %uuids), 4, 'UUIDs are distinct';
like $_, $UUID, "UUID $_" for sort keys %uuids;
my %ids = map { pval($_, 'PayloadIdentifier')->[1] => 1 } @pl, $p;
is scalar(keys %ids), 4, 'identifiers are distinct';

my ($root, $id, $mdm) = @pl;
check_types($root, { %common, PayloadCertificateFileName => 'string',
                     PayloadContent => 'data' }, 'root payload');
is pval($root, 'PayloadContent')->[1], der_of("$d/ca.crt"),
    'root payload holds the CA certificate (DER)';

check_types($id, { %common, PayloadCertificateFileName => 'string',
                   PayloadContent => 'data', Password => 'string' },
            'pkcs12 payload');
is pval($id, 'Password')->[1], 'pw1', 'PKCS#12 password';
spew("$w/from-profile.p12", pval($id, 'PayloadContent')->[1]);
$r = run('openssl', 'pkcs12', '-in', "$w/from-profile.p12", '-passin',
         'pass:' . pval($id, 'Password')->[1], '-nokeys', '-clcerts',
         '-out', "$w/id.pem");
is $r->{rc}, 0, 'identity PKCS#12 opens with its password' or diag $r->{err};
is fingerprint("$w/id.pem"), fingerprint("$d/$udid.crt"),
    'identity certificate is the device certificate';
$r = run('openssl', 'pkcs12', '-in', "$w/from-profile.p12", '-passin',
         'pass:pw1', '-nocerts', '-nodes', '-out', "$w/idkey.pem");
is run('openssl', 'pkey', '-in', "$w/idkey.pem", '-pubout')->{out},
   run('openssl', 'x509', '-in', "$w/id.pem", '-noout', '-pubkey')->{out},
   'identity key matches its certificate';

check_types($mdm, { %common, IdentityCertificateUUID => 'string',
                    Topic => 'string', ServerURL => 'string',
                    CheckInURL => 'string', AccessRights => 'integer',
                    SignMessage => 'boolean', CheckOutWhenRemoved => 'boolean',
                    UseDevelopmentAPNS => 'boolean',
                    ServerCapabilities => 'array' }, 'mdm payload');
is pval($mdm, 'IdentityCertificateUUID')->[1], pval($id, 'PayloadUUID')->[1],
    'IdentityCertificateUUID points at the identity payload';
is pval($mdm, 'Topic')->[1], $topic, 'topic read from the push certificate';
is pval($mdm, 'ServerURL')->[1], 'https://mdm.test:8443/mdm/connect',
    'ServerURL';
is pval($mdm, 'CheckInURL')->[1], 'https://mdm.test:8443/mdm/checkin',
    'CheckInURL';
is pval($mdm, 'AccessRights')->[1], 8191, 'all rights by default';
is pval($mdm, 'SignMessage')->[1], 0, 'SignMessage off by default';
is pval($mdm, 'CheckOutWhenRemoved')->[1], 1, 'CheckOutWhenRemoved on';
is pval($mdm, 'UseDevelopmentAPNS')->[1], 0, 'production APNs';
is_deeply [map { $_->[0] . ':' . $_->[1] }
           @{ pval($mdm, 'ServerCapabilities')->[1] }],
    ['string:com.apple.mdm.per-user-connections',
     'string:com.apple.mdm.bootstraptoken', 'string:com.apple.mdm.token'],
    'server capabilities';

$r = mdmctl('profile', 'check', "$w/p1.mobileconfig");
is $r->{rc}, 0, 'profile check accepts it' or diag $r->{err};
like $r->{out}, qr/^profile OK: 3 payloads, test\.mdm\.enroll$/m, 'check output';

# fresh UUIDs every time
$r = mdmctl(@base, '--topic', $topic, '--out', "$w/p2.mobileconfig");
is $r->{rc}, 0, 'second profile' or diag $r->{err};
my $p2 = plist_file("$w/p2.mobileconfig");
isnt pval($p2, 'PayloadUUID')->[1], pval($p, 'PayloadUUID')->[1],
    'a new top-level UUID';
is scalar(@{ pval($p2, 'PayloadContent')->[1] }), 2,
    'no CA payload without --ca-cert';

# ---- options -------------------------------------------------------------------

$r = mdmctl('profile', 'create', '--server-url', 'https://h.test/mdm',
            '--topic', $topic, '--scep-url', 'https://h.test/scep',
            '--scep-challenge', 'one-time', '--scep-subject',
            '/O=Example/CN=device', '--scep-keysize', '4096',
            '--scep-name', 'CA-1', '--rights', 'inspect,lock,erase',
            '--sign-message', '--no-checkout-when-removed', '--dev-apns',
            '--capabilities', 'per-user-connections', '--identifier',
            'org.example.enroll', '--description', 'Enrolls this device',
            '--out', "$w/scep.mobileconfig");
is $r->{rc}, 0, 'SCEP profile' or diag $r->{err};
my $s = plist_file("$w/scep.mobileconfig");
is pval($s, 'PayloadIdentifier')->[1], 'org.example.enroll', '--identifier';
is pval($s, 'PayloadDescription')->[1], 'Enrolls this device',
    '--description';
my ($scep, $m2) = @{ pval($s, 'PayloadContent')->[1] };
check_types($scep, { %common, PayloadContent => 'dict' }, 'scep payload');
check_types(pval($scep, 'PayloadContent'),
            { URL => 'string', Name => 'string', Challenge => 'string',
              Subject => 'array', Keysize => 'integer',
              'Key Type' => 'string', 'Key Usage' => 'integer' },
            'scep content');
is pval($scep, 'PayloadContent', 'URL')->[1], 'https://h.test/scep', 'URL';
is pval($scep, 'PayloadContent', 'Challenge')->[1], 'one-time', 'Challenge';
is pval($scep, 'PayloadContent', 'Keysize')->[1], 4096, 'Keysize';
is pval($scep, 'PayloadContent', 'Key Type')->[1], 'RSA', 'Key Type';
is pval($scep, 'PayloadContent', 'Key Usage')->[1], 5, 'Key Usage';
is pval($scep, 'PayloadContent', 'Subject', 1, 0, 1)->[1], 'device',
    'Subject is an array of arrays of pairs';
is pval($scep, 'PayloadContent', 'Subject', 0, 0, 0)->[1], 'O',
    'Subject first RDN type';
is pval($m2, 'IdentityCertificateUUID')->[1], pval($scep, 'PayloadUUID')->[1],
    'MDM points at the SCEP payload';
is pval($m2, 'AccessRights')->[1], 1 | 4 | 8, 'readable rights';
is pval($m2, 'SignMessage')->[1], 1, '--sign-message';
is pval($m2, 'CheckOutWhenRemoved')->[1], 0, '--no-checkout-when-removed';
is pval($m2, 'UseDevelopmentAPNS')->[1], 1, '--dev-apns';
is pval($m2, 'ServerURL')->[1], 'https://h.test/mdm', '--server-url';
ok !pval($m2, 'CheckInURL'), 'no CheckInURL unless given';
is scalar(@{ pval($m2, 'ServerCapabilities')->[1] }), 1, '--capabilities';

$r = mdmctl('profile', 'create', '--server-url', 'https://h.test/mdm',
            '--topic', $topic, '--scep-url', 'https://h.test/scep',
            '--rights', '17', '--capabilities', 'none', '--out',
            "$w/none.mobileconfig");
is $r->{rc}, 0, 'numeric rights, no capabilities' or diag $r->{err};
my $n = plist_file("$w/none.mobileconfig");
is pval($n, 'PayloadContent', 1, 'AccessRights')->[1], 17, 'rights 17';
ok !pval($n, 'PayloadContent', 1, 'ServerCapabilities'),
    'no ServerCapabilities with none';

# ---- CMS signing ------------------------------------------------------------------

issue_cert('signer', ca => 'apple', subj => '/CN=Profile Signer',
           ext => "basicConstraints=critical,CA:FALSE\n"
                . "keyUsage=critical,digitalSignature\n");
$r = mdmctl(@base, '--topic', $topic, '--sign-cert', "$w/signer.crt",
            '--sign-key', "$w/signer.key", '--sign-chain', "$w/apple.crt",
            '--out', "$w/signed.mobileconfig");
is $r->{rc}, 0, 'signed profile' or diag $r->{err};
like slurp("$w/signed.mobileconfig"), qr/^\x30/, 'DER output';
$r = run('openssl', 'cms', '-verify', '-inform', 'DER', '-in',
         "$w/signed.mobileconfig", '-CAfile', "$w/apple.crt", '-purpose',
         'any', '-out', "$w/signed-content.plist");
is $r->{rc}, 0, 'openssl cms -verify accepts the signature' or diag $r->{err};
like $r->{err}, qr/Verification successful/, 'verification successful';
my $sc = plist_file("$w/signed-content.plist");
is pval($sc, 'PayloadContent', 1, 'Topic')->[1], $topic,
    'signed content is the profile';

$r = run('openssl', 'cms', '-verify', '-inform', 'DER', '-in',
         "$w/signed.mobileconfig", '-CAfile', "$d/ca.crt", '-purpose', 'any',
         '-out', '/dev/null');
isnt $r->{rc}, 0, 'cms -verify with an unrelated CA fails';

my $der = slurp("$w/signed.mobileconfig");
my $at = index($der, 'com.apple.mgmt.External');
ok $at > 0, 'topic inside the signed data';
substr($der, $at, 1, 'X');
spew("$w/tampered.mobileconfig", $der);
$r = run('openssl', 'cms', '-verify', '-inform', 'DER', '-in',
         "$w/tampered.mobileconfig", '-CAfile', "$w/apple.crt", '-purpose',
         'any', '-out', '/dev/null');
isnt $r->{rc}, 0, 'tampered content fails openssl cms -verify';
$r = mdmctl('profile', 'check', "$w/tampered.mobileconfig");
is $r->{rc}, 1, 'profile check rejects tampered content';
like $r->{err}, qr/^mdmctl profile check: \S+: the CMS signature does not verify: /,
    'tampered: error line';

$r = mdmctl('profile', 'check', '--ca', "$w/apple.crt",
            "$w/signed.mobileconfig");
is $r->{rc}, 0, 'profile check of the signed profile' or diag $r->{err};
like $r->{out}, qr/^signed by CN=Profile Signer \(chain verified\)$/m,
    'signer reported';

$r = mdmctl('profile', 'sign', '--in', "$w/p2.mobileconfig", '--sign-cert',
            "$w/signer.crt", '--sign-key', "$w/signer.key", '--out',
            "$w/p2.signed");
is $r->{rc}, 0, 'profile sign' or diag $r->{err};
$r = run('openssl', 'cms', '-verify', '-inform', 'DER', '-in',
         "$w/p2.signed", '-CAfile', "$w/apple.crt", '-purpose', 'any',
         '-out', "$w/p2.content");
is $r->{rc}, 0, 'signed later: verifies';
is slurp("$w/p2.content"), slurp("$w/p2.mobileconfig"),
    'signed later: content unchanged';

# ---- serving it: the nginx block of mdmctl/README.md -------------------------

my $readme = slurp("$MdmctlTest::ROOT/mdmctl/README.md");
my ($snip) = $readme =~ /# BEGIN enroll-location\n(.*?)# END enroll-location/s;
ok $snip, 'README has the enroll location';
$snip =~ s{/etc/mdm/}{$w/}g;
$r = run('openssl', 'passwd', '-6', 'secret');
spew("$w/enroll.htpasswd", "alice:$r->{out}");
spew("$w/enroll.mobileconfig", slurp("$w/signed.mobileconfig"));
my $ngx = start_nginx(<<EOF);
    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name mdm.test;
        ssl_certificate $d/server.crt;
        ssl_certificate_key $d/server.key;
$snip
    }
EOF
my $port = $ngx->{port};
my @curl = ('curl', '-sS', '--max-time', '10', '--cacert', "$d/ca.crt",
            '--resolve', "mdm.test:$port:127.0.0.1", '-o', "$w/dl",
            '-D', "$w/dl.h", '-w', '%{http_code}',
            "https://mdm.test:$port/enroll");
$r = run(@curl);
is $r->{out}, '401', 'profile download needs a password';
$r = run(@curl, '-u', 'alice:wrong');
is $r->{out}, '401', 'wrong password refused';
$r = run(@curl, '-u', 'alice:secret');
is $r->{out}, '200', 'profile served' or diag $r->{err};
my $h = slurp("$w/dl.h");
like $h, qr{^Content-Type: application/x-apple-aspen-config\r$}mi,
    'Content-Type application/x-apple-aspen-config';
like $h, qr{^Cache-Control: no-store\r$}mi, 'not cached';
is slurp("$w/dl"), slurp("$w/signed.mobileconfig"), 'the profile itself';
stop_nginx($ngx);

# ---- schema checks on edited profiles ---------------------------------------

sub edited {
    my ($name, $from, $to) = @_;
    my $x = slurp("$w/p1.mobileconfig.xml");
    $x =~ s/$from/$to/ or die "edit $name";
    return spew("$w/$name.xml", $x);
}

sub check_fails {
    my ($file, $re, $name) = @_;
    my $r = mdmctl('profile', 'check', $file);
    is $r->{rc}, 1, "$name: rejected";
    like $r->{err}, $re, "$name: error line";
}

check_fails(edited('nonremovable',
                   qr{<key>PayloadRemovalDisallowed</key>\s*<false/>},
                   '<key>PayloadRemovalDisallowed</key><true/>'),
            qr/^mdmctl profile check: top level: PayloadRemovalDisallowed is true: the MDM enrollment profile must stay removable$/m,
            'not removable');
check_fails(edited('badtype', qr{<key>AccessRights</key>\s*<integer>8191</integer>},
                   '<key>AccessRights</key><string>8191</string>'),
            qr/payload 3 \(com\.apple\.mdm\): AccessRights must be of type integer, not string$/m,
            'wrong type');
check_fails(edited('unknownkey', qr{<key>SignMessage</key>},
                   '<key>SignMesage</key>'),
            qr/payload 3 \(com\.apple\.mdm\): unknown key SignMesage$/m,
            'misspelt key');
check_fails(edited('missing', qr{<key>ServerURL</key>\s*<string>[^<]*</string>}, ''),
            qr/required key ServerURL is missing$/m, 'missing ServerURL');
check_fails(edited('http', qr{https://mdm.test:8443/mdm/connect},
                   'http://mdm.test/mdm'),
            qr/ServerURL "http:\/\/mdm\.test\/mdm" does not match \^https/m,
            'http URL');
check_fails(edited('badcap', qr{com.apple.mdm.token}, 'com.apple.mdm.tokens'),
            qr/ServerCapabilities\[\] is "com\.apple\.mdm\.tokens", allowed: /,
            'unknown capability');
check_fails(edited('badrights', qr{<integer>8191</integer>},
                   '<integer>2</integer>'),
            qr/AccessRights: profile installation \(2\) needs profile inspection \(1\)$/m,
            'rights 2 without 1');

# ---- wrong inputs ---------------------------------------------------------------


my @o = ('--out', "$w/x.mobileconfig", '--force');
spew("$w/x.mobileconfig", '');

fails(2, qr/^mdmctl profile create: refusing --removal-disallowed: the MDM enrollment profile must stay removable/m,
      'removal disallowed', @base, '--topic', $topic, '--removal-disallowed',
      @o);
fails(1, qr/^mdmctl profile create: \S+\.p12: wrong password for the PKCS#12 file$/m,
      'wrong p12 password', 'profile', 'create', '--url', 'https://h.test',
      '--topic', $topic, '--p12', "$d/$udid.p12", '--p12-password', 'nope',
      @o);
fails(1, qr/^mdmctl profile create: \S+nouid\.crt has no UID \(topic\) attribute in its subject: not an MDM push certificate$/m,
      'push cert without UID', @base, '--push-cert', "$w/nouid.crt", @o);
fails(1, qr/^mdmctl profile create: topic "com\.example\.x" must begin with com\.apple\.mgmt\.$/m,
      'bad topic', @base, '--topic', 'com.example.x', @o);
fails(2, qr/^mdmctl profile create: unknown access right "reboot"/m,
      'unknown right', @base, '--topic', $topic, '--rights', 'inspect,reboot',
      @o);
fails(2, qr/^mdmctl profile create: access right "install" \(2\) needs "inspect" \(1\)$/m,
      'install without inspect', @base, '--topic', $topic, '--rights',
      'install', @o);
fails(2, qr/^mdmctl profile create: server and check-in URLs must begin with https:\/\/$/m,
      'http server URL', 'profile', 'create', '--server-url', 'http://h.test',
      '--topic', $topic, '--scep-url', 'https://h/scep', @o);
fails(2, qr/^mdmctl profile create: give exactly one identity/m,
      'no identity', 'profile', 'create', '--url', 'https://h.test',
      '--topic', $topic, @o);
fails(1, qr/^mdmctl profile create: \S+signer\.key does not match the signing certificate \S+server\.crt$/m,
      'sign key does not match', @base, '--topic', $topic, '--sign-cert',
      "$d/server.crt", '--sign-key', "$w/signer.key", @o);
fails(1, qr/^mdmctl profile create: \S+server\.crt does not chain to a system root or a --ca-cert: unable to get local issuer certificate \(give its CA with --ca-cert\)$/m,
      'private server CA not in the profile', @base, '--topic', $topic,
      '--server-cert', "$d/server.crt", @o);
fails(1, qr/^mdmctl profile create: \S+server\.crt does not name other\.test in its subjectAltName$/m,
      'server cert for another host', 'profile', 'create', '--url',
      'https://other.test', '--topic', $topic, '--p12', "$d/$udid.p12",
      '--p12-password', 'pw1', '--ca-cert', "$d/ca.crt", '--server-cert',
      "$d/server.crt", @o);
fails(1, qr/^mdmctl profile create: \S+x\.mobileconfig exists \(use --force to replace it\)$/m,
      'existing output', @base, '--topic', $topic, '--out',
      "$w/x.mobileconfig");

# an expired push certificate warns but still works
$r = mdmctl(@base, '--push-cert', "$w/expired.crt", @o);
is $r->{rc}, 0, 'expired push certificate: profile still written';
like $r->{err}, qr/^mdmctl profile create: warning: push certificate expired on Jan  1 00:00:00 2021 GMT$/m,
    'expired push certificate: warning line';

done_testing;
