#!/usr/bin/perl
# The whole enrollment with real clients: a profile from mdm_enroll, its
# challenge used by Debian's scepclient against mdm_scep, Authenticate and
# TokenUpdate with the issued certificate, a command round trip, then the
# renewal as a device performs it after an InstallProfile of a fresh
# enrollment profile (SCEP with its renewal challenge, then Authenticate,
# TokenUpdate and the command channel with the new certificate), the old
# certificate refused afterwards. RSA 2048 and 4096; PKCSReq and RenewalReq.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use ScepTest;

plan skip_all => 'scepclient (Debian package scep) is not installed'
    unless grep { -x "$_/scepclient" } split /:/, $ENV{PATH};

my $t = ScepTest->new;
my $d = $t->dir;
my $mdmctl = "$MdmTest::ROOT/mdmctl/mdmctl";

# the template: what `mdmctl profile create --scep-url` writes
my $url = 'https://localhost:' . $t->port('https');
$t->run_cmd("$mdmctl profile create --url $url --topic $MdmTest::TOPIC"
    . " --scep-url " . $t->scep_url . " --scep-challenge \@MDM_CHALLENGE\@"
    . " --scep-keysize 2048 --out $d/enroll.tpl");
like $t->slurp('enroll.tpl'), qr/\@MDM_CHALLENGE\@/, 'template has the tag';

$t->start_nginx($t->scep_conf(enroll => "mdm_enroll $d/enroll.tpl ttl=10m;"));

sub report {
    my ($udid, $cert, @kv) = @_;
    return $t->put('/mdm/connect', MdmTest::plist(UDID => $udid, @kv),
                   cert => $cert);
}

sub uuid_of {
    ($_[0]{body} =~ m{<key>CommandUUID</key>\s*<string>([^<]+)})[0] // ''
}

sub enqueue {
    my ($udid, $uuid, $rt, @extra) = @_;
    my $p = MdmTest::plist(CommandUUID => $uuid,
                           Command => { dict => [RequestType => $rt, @extra] });
    return $t->fcall('mdm_enqueue', [], $p, 5, 0, 1, $udid);
}

sub verify_issued {
    my ($s, $what) = @_;
    my $v = qx{openssl verify -CAfile $d/scep-ca.crt $s->{cert} 2>&1};
    like $v, qr/: OK$/m, "$what: openssl verifies the chain";
    my $text = qx{openssl x509 -in $s->{cert} -noout -text};
    like $text, qr/Digital Signature, Key Encipherment/, "$what: key usage";
    like $text, qr/TLS Web Client Authentication/, "$what: clientAuth";
    like $text, qr/Subject:.*CN = \Q$s->{name}\E/, "$what: subject from CSR";
}

my $n = 0;

sub enroll_device {
    my ($udid, $bits) = @_;
    my $p = $t->put('/enroll', '', method => 'GET', ct => undef, cert => undef);
    is $p->{status}, 200, "$udid: profile downloaded";
    is $p->{headers}{'content-type'}, 'application/x-apple-aspen-config',
        "$udid: profile content type";
    is $p->{headers}{'cache-control'}, 'no-store', "$udid: not cached";
    my ($ch) = $p->{body} =~ m{<key>Challenge</key>\s*<string>([0-9a-f]{32})<};
    ok $ch, "$udid: profile has a fresh challenge";
    my $s = $t->scepclient($udid, challenge => $ch, bits => $bits);
    is $s->{rc}, 0, "$udid: scepclient enrolled (RSA $bits)"
        or diag $s->{out};
    verify_issued($s, "$udid RSA $bits");
    my $rec = { $t->redis->hgetall("mdm:scep:cert:$s->{sha256}") };
    like $rec->{serial}, qr/^[0-9a-f]{30,32}$/, "$udid: issued recorded";
    my $again = $t->scepclient("$udid-again", challenge => $ch, bits => 2048);
    isnt $again->{rc}, 0, "$udid: the profile's challenge is single-use";
    $t->enroll($udid, $s);
    pass "$udid: Authenticate and TokenUpdate with the SCEP certificate";
    enqueue($udid, "DI-$udid", 'DeviceInformation');
    my $r = report($udid, $s, Status => 'Idle');
    is uuid_of($r), "DI-$udid", "$udid: command delivered";
    $r = report($udid, $s, Status => 'Acknowledged', CommandUUID => "DI-$udid");
    is $r->{status}, 200, "$udid: command acknowledged";
    return $s;
}

my $d1 = enroll_device('SCEPDEV1', 2048);
my $d2 = enroll_device('SCEPDEV2', 4096);

# --- two profiles: each its own challenge --------------------------------
my @ch = map { ($t->put('/enroll', '', method => 'GET', ct => undef,
                        cert => undef)->{body}
                =~ m{<key>Challenge</key>\s*<string>([0-9a-f]{32})<})[0] } 1, 2;
isnt $ch[0], $ch[1], 'each download carries its own challenge';

# --- renewal through a renewal challenge (PKCSReq), 4096 -----------------
# mdmctl renew mints the device's challenge and queues the InstallProfile;
# the device fetches it with its current certificate, runs SCEP, then
# re-sends Authenticate and TokenUpdate with the new identity.
my $out = qx{$mdmctl renew --redis unix:$d/redis.sock --profile $d/enroll.tpl SCEPDEV2 2>&1};
is $?, 0, 'mdmctl renew queued the profile' or diag $out;
my $r = report('SCEPDEV2', $d2, Status => 'Idle');
my ($rt) = $r->{body} =~ m{<key>RequestType</key>\s*<string>(\w+)<};
is $rt, 'InstallProfile', 'device gets the InstallProfile with the old cert';
my $iu = uuid_of($r);
require MIME::Base64;
my ($b64) = $r->{body} =~ m{<key>Payload</key>\s*<data>([^<]+)</data>};
my $prof = MIME::Base64::decode_base64($b64 // '');
my ($rch) = $prof =~ m{<key>Challenge</key>\s*<string>([^<]+)<};
ok $rch, 'the profile carries a renewal challenge';
like $prof, qr/<string>com\.apple\.mdm<\/string>/, 'with the MDM payload';

my $n2 = $t->scepclient('SCEPDEV2-new', cn => 'SCEPDEV2', challenge => $rch,
                        bits => 4096);
is $n2->{rc}, 0, 'renewal enrollment with the device challenge'
    or diag $n2->{out};
verify_issued($n2, 'renewed RSA 4096');
$r = report('SCEPDEV2', $d2, Status => 'Idle');
is $r->{status}, 200, 'until the new cert is used the old one works';

my $ev0 = $t->events_len;
$r = $t->put('/mdm/checkin', $t->authenticate('SCEPDEV2'), cert => $n2);
is $r->{status}, 200, 'Authenticate with the renewed certificate';
my @ev = @{ $t->redis->xrange('mdm:audit', '-', '+') };
my ($ren) = grep { my %f = @{ $_->[1] }; ($f{type} // '') eq 'CertificateRenewed' } @ev;
ok $ren, 'CertificateRenewed event';
my %rf = @{ $ren->[1] // [] };
is $rf{old}, $d2->{sha256}, 'event names the old certificate';
is $rf{cert}, $n2->{sha256}, 'and the new one';
like $t->slurp('error.log'), qr/mdm: scep issued .*device="SCEPDEV2"/,
    'the issuance was logged with its device';
$r = $t->put('/mdm/checkin', $t->token_update('SCEPDEV2'), cert => $n2);
is $r->{status}, 200, 'TokenUpdate with the renewed certificate';
$r = report('SCEPDEV2', $n2, Status => 'Acknowledged', CommandUUID => $iu);
is $r->{status}, 200, 'InstallProfile acknowledged with the new certificate';
enqueue('SCEPDEV2', 'DI-R2', 'DeviceInformation');
$r = report('SCEPDEV2', $n2, Status => 'Idle');
is uuid_of($r), 'DI-R2', 'command round trip after the renewal';
$r = report('SCEPDEV2', $d2, Status => 'Idle');
is $r->{status}, 403, 'the old certificate is refused';
$r = $t->put('/mdm/checkin', $t->authenticate('SCEPDEV2'), cert => $d2);
is $r->{status}, 403, 'also at Authenticate';

# --- renewal through a RenewalReq signed with the bound cert, 2048 -------
# scepclient signs with the certificate it is given when that is not
# self-signed, and sends RenewalReq (messageType 17).
mkdir "$d/sc-SCEPDEV1-r";
$t->run_cmd("cp $d1->{cert} $d/sc-SCEPDEV1-r/cert.pem");
my $rr = $t->scepclient('SCEPDEV1-r', cn => 'SCEPDEV1', key => $d1->{key},
                        cert => "$d/sc-SCEPDEV1-r/cert.pem");
like $t->slurp('error.log'), qr/scep issued .*device="SCEPDEV1" RenewalReq/,
    'scepclient sent a RenewalReq, issued for the bound device';
ok $rr->{sha256} && $rr->{sha256} ne $d1->{sha256}, 'a new certificate'
    or diag $rr->{out};
SKIP: {
    skip 'no renewed certificate', 4 unless $rr->{sha256}
                                           && $rr->{sha256} ne $d1->{sha256};
    $r = report('SCEPDEV1', $rr, Status => 'Idle');
    is $r->{status}, 200, 'the RenewalReq certificate moves the binding';
    $r = report('SCEPDEV1', $d1, Status => 'Idle');
    is $r->{status}, 403, 'the old certificate is refused';
    my $old = $t->redis->zscore('mdm:scep:revoked', $d1->{sha256});
    ok defined $old, 'the old certificate is in the revoked set';
    $r = $t->put('/mdm/checkin', $t->token_update('SCEPDEV1'), cert => $rr);
    is $r->{status}, 200, 'TokenUpdate with the renewed certificate';
}

done_testing;
