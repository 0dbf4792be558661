package MdmSign;

# Test helpers for device identities outside TLS: Mdm-Signature values
# (detached CMS SignedData made by `openssl cms -sign`) and forwarded
# certificate header values (nginx $ssl_client_escaped_cert, RFC 9440).
#
#   use MdmSign qw(mdm_signature escaped_pem rfc9440);
#   my $dc = $t->device_cert('dev1');               # MdmTest, or any
#   my $sig = mdm_signature($body, $dc);             # { cert, key }
#   $t->put('/mdm/checkin', $body, cert => undef,
#           headers => { 'Mdm-Signature' => $sig });
#
# Options of sign_der / mdm_signature:
#   md => 'sha256' (default) | 'sha1' | ...    digest algorithm
#   ber => 1            indefinite-length BER, like the devices' (openssl
#                       cms -stream, then the streamed content cut out)
#   nocerts => 1        leave the signer certificate out
#   certfile => path    extra certificates to embed (intermediates)
#   noattr => 1         no signed attributes
#   keyid => 1          signer named by subjectKeyIdentifier, not issuer+serial
#   attached => 1       embed the body (not what devices send)
# A second signer: pass an array ref of { cert, key } as the signer.

use strict;
use warnings;
use Exporter 'import';
use File::Temp qw(tempdir);
use MIME::Base64 qw(encode_base64);

our @EXPORT_OK = qw(sign_der mdm_signature escaped_pem rfc9440 cert_der
                    is_indefinite asn1_text);

my $TMP;

sub _tmp {
    $TMP //= tempdir('mdm-sign-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    return $TMP;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or die "$path: $!";
    local $/;
    my $d = <$fh>;
    close $fh;
    return $d // '';
}

sub _spew {
    my ($path, $data) = @_;
    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $data;
    close $fh or die "$path: $!";
}

# Runs a command given as a list (no shell); dies with its output on error.
sub _run {
    my (@cmd) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or die "exec $cmd[0]: $!";
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    die "command failed: @cmd\n$out" if $?;
    return $out;
}

# Raw CMS SignedData (DER, or indefinite-length BER with ber => 1).
sub sign_der {
    my ($body, $signer, %o) = @_;
    my $d = _tmp();
    my $in = "$d/body.$$";
    my $out = "$d/sig.$$";
    _spew($in, $body);
    my @signers = ref $signer eq 'ARRAY' ? @$signer : ($signer);
    my @cmd = ('openssl', 'cms', '-sign', '-binary', '-in', $in,
               '-md', $o{md} // 'sha256', '-outform', 'DER', '-out', $out);
    for my $s (@signers) {
        push @cmd, '-signer', $s->{cert}, '-inkey', $s->{key};
    }
    # openssl cms writes indefinite lengths only when streaming the content
    # in; the content is cut out again below.
    push @cmd, '-stream', '-nodetach' if $o{ber};
    push @cmd, '-nocerts' if $o{nocerts};
    push @cmd, '-noattr' if $o{noattr};
    push @cmd, '-keyid' if $o{keyid};
    push @cmd, '-nodetach' if $o{attached};
    push @cmd, '-certfile', $o{certfile} if $o{certfile};
    _run(@cmd);
    my $der = _slurp($out);
    unlink $in, $out;
    $der = _detach_ber($der) if $o{ber} && !$o{attached};
    return $der;
}

# Removes eContent [0] (up to the EOC that closes it, one level deeper in
# asn1parse terms) from an indefinite-length SignedData: every enclosing
# element has the indefinite form, so no length needs fixing, and the
# signature covers the content's digest, not its encoding.
sub _detach_ber {
    my ($ber) = @_;
    my ($start, $end, $after_data);
    # -dump: contents as hex, so no body line can look like an element.
    for (split /\n/, asn1_text($ber, '-dump')) {
        my ($off, $depth, $rest) = /^\s*(\d+):d=(\d+)\s+hl=\s*\d+\s+(.*)$/
            or next;
        if (!defined $start) {
            $after_data = 1, next if $depth == 4 && $rest =~ /:pkcs7-data\s*$/;
            $start = $off if $after_data && $depth == 4
                && $rest =~ /^l=inf\s+cons: cont \[ 0 \]/;
            $after_data = 0;
        } elsif ($depth == 5 && $rest =~ /prim: EOC/) {
            $end = $off + 2;
            last;
        }
    }
    die "cannot find the BER eContent" unless defined $start && defined $end;
    return substr($ber, 0, $start) . substr($ber, $end);
}

# The Mdm-Signature header value: base64 without line breaks.
sub mdm_signature {
    my ($body, $signer, %o) = @_;
    return encode_base64(sign_der($body, $signer, %o), '');
}

# `openssl asn1parse` output for DER/BER bytes (extra options after).
sub asn1_text {
    my ($der, @opt) = @_;
    my $f = _tmp() . "/asn1.$$";
    _spew($f, $der);
    my $out = _run('openssl', 'asn1parse', '-inform', 'DER', '-in', $f, @opt);
    unlink $f;
    return $out;
}

# True when the outer ContentInfo uses the indefinite length form.
sub is_indefinite {
    my ($der) = @_;
    my ($first) = split /\n/, asn1_text($der);
    return ($first // '') =~ /l=inf/ ? 1 : 0;
}

sub _path { ref $_[0] ? $_[0]{cert} : $_[0] }

sub cert_der {
    my ($cert) = @_;
    return _run('openssl', 'x509', '-in', _path($cert), '-outform', 'DER');
}

# What nginx's $ssl_client_escaped_cert gives: the PEM, URL-escaped as a
# URI component (only unreserved characters left as they are).
sub escaped_pem {
    my ($cert) = @_;
    my $pem = _run('openssl', 'x509', '-in', _path($cert));
    $pem =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge;
    return $pem;
}

# RFC 9440 Client-Cert: a structured-field byte sequence, ":base64(DER):".
sub rfc9440 {
    my ($cert) = @_;
    return ':' . encode_base64(cert_der($cert), '') . ':';
}

1;
