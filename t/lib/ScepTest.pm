package ScepTest;

# SCEP test helpers on top of MdmTest: an RSA SCEP CA, a configuration with
# mdm_scep (plain HTTP, as SCEP runs; message-level security) and mdm_enroll
# next to the MDM locations (TLS trusts both CAs), minting challenges, and
# Debian's scepclient.

use strict;
use warnings;
use Test::More;
use MdmTest;

our @ISA = ('MdmTest');

sub new {
    my ($class, %o) = @_;
    my $self = MdmTest::new($class, %o);
    my $d = $self->dir;
    $self->run_cmd("openssl req -x509 -new -newkey rsa:2048 -nodes"
        . " -keyout $d/scep-ca.key -subj '/CN=MDM SCEP Test CA' -days 30"
        . " -out $d/scep-ca.crt -addext basicConstraints=critical,CA:TRUE"
        . " -addext keyUsage=critical,keyCertSign,cRLSign");
    $self->spew('trust.pem', $self->slurp('ca.crt') . $self->slurp('scep-ca.crt'));
    return $self;
}

# %o: scep (extra lines in the SCEP location), enroll (mdm_enroll lines)
sub scep_conf {
    my ($self, %o) = @_;
    my $scep = $o{scep} // '';
    my $enroll = $o{enroll} // '';
    my $conf = $self->conf(
        extra => "ssl_client_certificate %%TESTDIR%%/trust.pem;",
        locations => <<EOF);
        location = /mdm/checkin { mdm_checkin; }
        location = /mdm/connect { mdm_command; }
        location = /static { return 200 "static\\n"; }
        location = /enroll { $enroll }
    }
    server {
        listen 127.0.0.1:%%PORT_http%%;
        client_max_body_size 1m;
        client_body_buffer_size 128k;
        location = /scep {
            mdm_scep;
            mdm_scep_ca %%TESTDIR%%/scep-ca.crt %%TESTDIR%%/scep-ca.key;
            mdm_scep_des on;
            $scep
        }
        location = /static { return 200 "static\\n"; }
EOF
    # the standard conf names ssl_client_certificate already: ours wins
    $conf =~ s{ssl_client_certificate %%TESTDIR%%/ca.crt;\n}{};
    return $conf;
}

sub scep_url { 'http://127.0.0.1:' . $_[0]->port('http') . '/scep' }

# Single-use challenges through the admin function; returns them.
sub mint {
    my ($self, %o) = @_;
    my $n = $o{count} // 1;
    my @c = map { sprintf 'ch%08x%08x', int(rand(2**32)), int(rand(2**32)) }
        1 .. $n;
    $self->fcall('mdm_scep_mint', [], $o{ttl} // 600, $o{device} // '', @c);
    return wantarray ? @c : $c[0];
}

# scepclient enrollment of name with a key of bits; returns
# { rc, out, cert, key, sha256 }.
sub scepclient {
    my ($self, $name, %o) = @_;
    my $d = $self->dir;
    mkdir "$d/sc-$name";
    my $key = $o{key} // "$d/sc-$name/key.pem";
    my $crt = $o{cert} // "$d/sc-$name/cert.pem";
    my @cmd = ('scepclient', '-server-url', $self->scep_url,
        '-private-key', $key, '-certificate', $crt,
        '-cn', $o{cn} // $name, '-keySize', $o{bits} // 2048,
        (defined $o{challenge} ? ('-challenge', $o{challenge}) : ()));
    my $pid = open(my $fh, '-|') // die;
    if (!$pid) {
        chdir "$d/sc-$name";
        open STDERR, '>&', \*STDOUT;
        exec @cmd or die;
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    my $r = { rc => $?, out => $out // '', cert => $crt, key => $key };
    if (-s $crt) {
        my $fp = qx{openssl x509 -in $crt -noout -fingerprint -sha256};
        $fp =~ s/.*=//s;
        $fp =~ s/[:\s]//g;
        $r->{sha256} = lc $fp;
        $r->{name} = $o{cn} // $name;
    }
    return $r;
}

1;
