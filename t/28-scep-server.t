#!/usr/bin/perl
# mdm_scep, message by message: GetCACaps, GetCACert, PKIOperation over POST
# and GET, the static lab challenge, mdmctl scep, and every bad input of
# issue 11. A bad input gets a signed FAILURE with the right failInfo (or
# 400 when it is not SCEP at all, 413 when oversized), one log line, and
# changes nothing in Redis: nothing issued, nothing consumed. The hostile
# messages are built with openssl and t/unit/scep_req.c.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Digest::SHA qw(sha1_hex);
use MIME::Base64 qw(encode_base64);
use ScepTest;

my $t = ScepTest->new;
my $d = $t->dir;
my $root = $MdmTest::ROOT;
my $mdmctl = "$root/mdmctl/mdmctl";
my $tool = "$d/scep_req";
$t->run_cmd("cc -O1 -o $tool $root/t/unit/scep_req.c -lcrypto");

my $conf = $t->scep_conf;
$conf =~ s{(        location = /static \{ return 200 "static\\n"; \}\n\s*\}\n\}\n)$}{
        location = /scep-aes {
            mdm_scep;
            mdm_scep_ca %%TESTDIR%%/scep-ca.crt %%TESTDIR%%/scep-ca.key;
            mdm_scep_des off;
        }
        location = /scep-lab {
            mdm_scep;
            mdm_scep_ca %%TESTDIR%%/scep-ca.crt %%TESTDIR%%/scep-ca.key;
            mdm_scep_challenge labsecret1;
            mdm_scep_validity 2d;
        }
$1}s or die 'conf layout';
$t->start_nginx($conf);

# --- the requester's pieces -------------------------------------------------
my $n = 0;

# key, self-signed cert and a DER CSR (with challenge unless undef)
sub requester {
    my ($name, $challenge, %o) = @_;
    my $bits = $o{bits} // 2048;
    my $attrs = defined $challenge ? "attributes = attrs\n[attrs]\n"
                                     . "challengePassword = $challenge\n" : '';
    $t->spew("$name.cnf", "[req]\nprompt = no\ndistinguished_name = dn\n"
             . "$attrs\[dn]\nCN = $name\n");
    $t->run_cmd("openssl req -new -newkey rsa:$bits -nodes -keyout $d/$name.key"
        . " -config $d/$name.cnf -outform DER -out $d/$name.csr");
    $t->run_cmd("openssl req -x509 -new -key $d/$name.key -subj /CN=$name"
        . " -days 1 -out $d/$name.self");
    return { key => "$d/$name.key", self => "$d/$name.self",
             csr => "$d/$name.csr", name => $name };
}

# a PKIOperation: %o type, cipher, to (recipient cert), signer, key, csr
sub message {
    my ($q, %o) = @_;
    my $out = "$d/msg" . ++$n . '.der';
    my $nonce = join '', map { sprintf '%02x', int rand 256 } 1 .. 16;
    $t->run_cmd(join ' ', $tool, 'build', $o{type} // 19,
        $o{cipher} // 'aes-128-cbc', $o{to} // "$d/scep-ca.crt",
        $o{signer} // $q->{self}, $o{key} // $q->{key}, $o{csr} // $q->{csr},
        $nonce, "tx$n", $out);
    return $t->slurp($out);
}

sub post {
    my ($der, $path) = @_;
    return $t->put(($path // '/scep') . '?operation=PKIOperation', $der,
                   method => 'POST', plain => 1,
                   ct => 'application/x-pki-message');
}

# the CertRep's attributes; with a requester, the certificate issued
sub certrep {
    my ($r, $q) = @_;
    my $f = $t->spew("rep" . ++$n . '.der', $r->{body});
    my @a = $q ? ($q->{key}, $q->{self}, "$d/$q->{name}.crt") : ();
    my $out = qx{$tool read $f @a 2>&1};
    my %h = $out =~ /^(\w+)=(.*)$/mg;
    $h{out} = $out;
    return \%h;
}

sub scep_log_lines {
    return scalar grep { /mdm: scep/ } split /\n/, $t->log_since_mark;
}

# the bad input: its reply, one log line, Redis untouched
sub refused {
    my ($name, $send, %want) = @_;
    my $before = $t->redis_state;
    my $ev = $t->events_len;
    $t->mark_log;
    my $r = $send->();
    if ($want{http}) {
        is $r->{status}, $want{http}, "$name: HTTP $want{http}";
    } else {
        is $r->{status}, 200, "$name: answered";
        my $c = certrep($r);
        is "$c->{status}/$c->{failInfo}", "2/$want{fail}",
            "$name: FAILURE failInfo=$want{fail}" or diag $c->{out};
        is $c->{verified}, 1, "$name: the FAILURE is signed by the CA";
    }
    select undef, undef, undef, 0.05;
    is scep_log_lines(), 1, "$name: one log line" or diag $t->log_since_mark;
    like $t->log_since_mark, $want{log}, "$name: the reason is logged"
        if $want{log};
    $t->state_unchanged($before, "$name: nothing issued, nothing consumed");
    is $t->events_len, $ev, "$name: no event";
}

# --- GetCACaps, GetCACert ----------------------------------------------------
my $r = $t->put('/scep?operation=GetCACaps', '', method => 'GET', plain => 1,
                ct => undef);
is $r->{status}, 200, 'GetCACaps';
for my $cap (qw(POSTPKIOperation SHA-256 AES SCEPStandard Renewal)) {
    like $r->{body}, qr/^\Q$cap\E$/m, "GetCACaps: $cap";
}
$r = $t->put('/scep?operation=GetCACert', '', method => 'GET', plain => 1,
             ct => undef);
is $r->{headers}{'content-type'}, 'application/x-x509-ca-cert',
    'GetCACert content type';
my $ca_der = $t->run_cmd("openssl x509 -in $d/scep-ca.crt -outform DER");
ok $r->{body} eq $ca_der, 'GetCACert: the CA certificate, DER';
$r = $t->put('/scep?operation=GetNextCACert', '', method => 'GET',
             plain => 1, ct => undef);
is $r->{status}, 400, 'unknown operation: 400';

# --- PKCSReq over POST and GET -----------------------------------------------
my $c1 = $t->mint;
my $q1 = requester('req1', $c1);
my $m1 = message($q1);
$r = post($m1);
is $r->{headers}{'content-type'}, 'application/x-pki-message', 'CertRep type';
my $rep = certrep($r, $q1);
is "$rep->{messageType}/$rep->{status}", '3/0', 'POST PKCSReq: SUCCESS'
    or diag $rep->{out};
like $rep->{issued}, qr/^[0-9a-f]{64}$/, 'the reply holds the certificate';
my $x = $t->run_cmd("openssl x509 -in $d/req1.crt -noout -text");
like $x, qr/Subject: CN = req1/, 'subject from the CSR';
is $t->redis->exists('mdm:scep:ch:' . sha1_hex($c1)), 0, 'challenge consumed';
my %rec = $t->redis->hgetall("mdm:scep:cert:$rep->{issued}");
like $rec{serial}, qr/^[0-9a-f]+$/, 'issuance recorded: serial';
is $rec{subject}, '/CN=req1', 'issuance recorded: subject';
ok $rec{not_after_ms} > time * 1000, 'issuance recorded: notAfter';

my $c2 = $t->mint;
my $q2 = requester('req2', $c2);
my $b64 = encode_base64(message($q2), '');
$b64 =~ s/([+\/=])/sprintf '%%%02X', ord $1/ge;
$r = $t->put("/scep?operation=PKIOperation&message=$b64", '', method => 'GET',
             plain => 1, ct => undef);
$rep = certrep($r, $q2);
is $rep->{status}, '0', 'GET PKIOperation: SUCCESS' or diag $rep->{out};
my $req2_sha = $rep->{issued};

# --- static lab challenge ------------------------------------------------------
my $ql = requester('lab1', 'labsecret1');
$rep = certrep(post(message($ql), '/scep-lab'), $ql);
is $rep->{status}, '0', 'mdm_scep_challenge: the static challenge works';
$x = $t->run_cmd("openssl x509 -in $d/lab1.crt -noout -enddate");
my ($end) = $x =~ /notAfter=(.*)/;
require Time::Piece;
my $left = Time::Piece->strptime($end =~ s/\s+GMT$//r, '%b %d %H:%M:%S %Y')->epoch
           - time;
ok $left > 86400 && $left <= 2 * 86400, 'mdm_scep_validity 2d';
$rep = certrep(post(message($ql)), $ql);
is "$rep->{status}/$rep->{failInfo}", '2/2',
    'without mdm_scep_challenge the static one is unknown';

# --- mdmctl scep ---------------------------------------------------------------
my $ctl = "MDM_REDIS=unix:" . $t->redis_sock . " $mdmctl scep";
my @ch = split /\n/, $t->run_cmd("$ctl challenge --ttl 60 --count 3");
is scalar(grep { /^[0-9a-f]{32}$/ } @ch), 3, 'mdmctl scep challenge --count 3';
ok $t->redis->ttl('mdm:scep:ch:' . sha1_hex($ch[0])) <= 60, '--ttl';
my $list = $t->run_cmd("$ctl issued");
like $list, qr/^\Q$req2_sha\E [0-9a-f]+ \S+ - valid \/CN=req2$/m,
    'mdmctl scep issued';

# --- bad input ---------------------------------------------------------------------
refused('garbage', sub { post("hello, not SCEP") }, http => 400,
        log => qr/not a PKCS#7 SignedData/);
my $cg = $t->mint;
my $qg = requester('good', $cg);
my $good = message($qg);
refused('truncated', sub { post(substr $good, 0, length($good) / 2) },
        http => 400);
refused('empty body', sub { post('') }, http => 400);
refused('oversized body', sub { post('x' x (70 * 1024)) }, http => 413,
        log => qr/over 64 KB/);

my $other = requester('other', undef);
refused('not encrypted to us', sub { post(message($qg, to => $other->{self})) },
        fail => 1, log => qr/not encrypted to our CA/);

my $bad = $t->slurp($qg->{csr});
substr($bad, -5, 1) = chr(ord(substr $bad, -5, 1) ^ 0xff);
my $badf = $t->spew('bad.csr', $bad);
refused('CSR signature', sub { post(message($qg, csr => $badf)) }, fail => 1,
        log => qr/CSR signature does not verify/);

my $small = requester('small', $t->mint, bits => 1024);
refused('RSA 1024', sub { post(message($small)) }, fail => 0,
        log => qr/not RSA of 2048/);

my $unk = requester('unknown', 'never-minted-1');
refused('unknown challenge', sub { post(message($unk)) }, fail => 2,
        log => qr/unknown, used or expired challenge/);

my $ce = $t->mint(ttl => 10);
my $qe = requester('expired', $ce);
$t->redis->pexpire('mdm:scep:ch:' . sha1_hex($ce), 1);
select undef, undef, undef, 0.05;
refused('expired challenge', sub { post(message($qe)) }, fail => 2);

refused('used challenge', sub { post(message($q1)) }, fail => 2);

refused('replayed transaction', sub { post($m1) }, fail => 2,
        log => qr/replayed/);

refused('DES with mdm_scep_des off',
        sub { post(message($qg, cipher => 'des-cbc'), '/scep-aes') },
        fail => 0, log => qr/unsupported content-encryption/);
refused('RC2 (never accepted)', sub { post(message($qg, cipher => 'rc2-cbc')) },
        fail => 0);

# the good message still goes through: nothing above consumed its challenge
$rep = certrep(post($good), $qg);
is $rep->{status}, '0', 'the challenge of the refused requests still works';

# --- RenewalReq -------------------------------------------------------------------
my $qn = requester('renew1', undef);
refused('RenewalReq signed by a certificate bound to no device',
        sub { post(message($qn, type => 17, signer => "$d/req2.crt",
                           key => $q2->{key})) },
        fail => 2, log => qr/not signed by a device's bound certificate/);

# bind req1's certificate to device SREV, then revoke it
my $dev = { cert => "$d/req1.crt", key => $q1->{key} };
$t->enroll('SREV', $dev);
my ($sr) = $t->run_cmd("openssl x509 -in $d/req1.crt -noout -serial")
    =~ /serial=(\w+)/;
$t->run_cmd("$ctl revoke $sr");
is $t->put('/mdm/connect', MdmTest::plist(UDID => 'SREV', Status => 'Idle'),
           cert => $dev)->{status}, 403, 'a revoked certificate: 403 on reports';
is $t->put('/mdm/checkin', $t->authenticate('SREV'), cert => $dev)->{status},
    403, 'and on check-ins';
refused('RenewalReq signed by a revoked certificate',
        sub { post(message($qn, type => 17, signer => "$d/req1.crt",
                           key => $q1->{key})) },
        fail => 2, log => qr/revoked/);
like $t->run_cmd("$ctl issued"), qr/ revoked \/CN=req1$/m,
    'mdmctl scep issued shows it revoked';

$t->finish;
done_testing;
