package MdmctlTest;

# Helpers for the mdmctl tests: run the tool and other commands capturing
# exit status, stdout and stderr; read XML/binary plists into typed Perl
# structures; issue certificates with openssl (including expired ones);
# start a plain nginx (no module) for TLS checks.
#
#   my $r = mdmctl(qw(pki ca --dir), $dir);   # { rc, out, err }
#   my $p = plist_file($path);                # [type, value] nodes

use strict;
use warnings;
use Exporter 'import';
use File::Temp qw(tempdir);
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);
use XML::LibXML;
use Test::More ();

our @EXPORT = qw(mdmctl fails run workdir slurp spew plist_file plist_string
                 pval keys_of issue_cert der_of fingerprint start_nginx
                 stop_nginx free_port);

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
our $BIN = "$ROOT/mdmctl/mdmctl";
our $DIR;

sub workdir {
    return $DIR if $DIR;
    $DIR = tempdir('mdmctl-test-XXXXXX', TMPDIR => 1,
                   CLEANUP => !$ENV{KEEP});
    # nginx workers (nobody when started as root) read files in here
    chmod 0755, $DIR;
    return $DIR;
}

# run(@argv) -> { rc, out, err }; no shell involved.
sub run {
    my (@cmd) = @_;
    my $d = workdir();
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', "$d/.out" or die;
        open STDERR, '>', "$d/.err" or die;
        open STDIN, '<', '/dev/null';
        exec @cmd or do { print STDERR "exec $cmd[0]: $!\n"; POSIX::_exit(127) };
    }
    waitpid $pid, 0;
    my $rc = $? & 127 ? 128 + ($? & 127) : $? >> 8;
    return { rc => $rc, out => slurp("$d/.out"), err => slurp("$d/.err") };
}

# MDMCTL_WRAP="valgrind -q --error-exitcode=99 --leak-check=full" runs the
# tool under a checker; any report fails the exit status and stderr checks.
sub mdmctl { run(split(' ', $ENV{MDMCTL_WRAP} // ''), $BIN, @_) }

# fails($rc, qr/error/, $name, @args): mdmctl exits $rc with exactly one
# line on stderr that matches.
sub fails {
    my ($rc, $re, $name, @args) = @_;
    my $r = mdmctl(@args);
    Test::More::is($r->{rc}, $rc, "$name: exit $rc");
    Test::More::like($r->{err}, $re, "$name: error line");
    Test::More::is(scalar(() = $r->{err} =~ /\n/g), 1, "$name: one line")
        or Test::More::diag($r->{err});
    return $r;
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return undef;
    local $/;
    my $d = <$fh>;
    return $d // '';
}

sub spew {
    my ($path, $data) = @_;
    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $data;
    close $fh;
    return $path;
}

# ---- plists ---------------------------------------------------------------

# Nodes are [type, value]: dict -> {key => node}, array -> [nodes],
# boolean -> 1/0, data -> raw bytes, others -> text.
sub plist_string {
    my ($xml) = @_;
    my $doc = XML::LibXML->load_xml(string => $xml, no_network => 1,
                                    load_ext_dtd => 0);
    my ($top) = grep { $_->nodeType == XML_ELEMENT_NODE }
                $doc->documentElement->childNodes;
    return _node($top);
}

sub _node {
    my ($e) = @_;
    my $n = $e->nodeName;
    my @kids = grep { $_->nodeType == XML_ELEMENT_NODE } $e->childNodes;
    if ($n eq 'dict') {
        my %h;
        my @order;
        while (@kids) {
            my ($k, $v) = splice @kids, 0, 2;
            die "dict without key" unless $k->nodeName eq 'key';
            die "duplicate key " . $k->textContent
                if exists $h{ $k->textContent };
            $h{ $k->textContent } = _node($v);
            push @order, $k->textContent;
        }
        return ['dict', \%h, \@order];
    }
    return ['array', [map { _node($_) } @kids]] if $n eq 'array';
    return ['boolean', 1] if $n eq 'true';
    return ['boolean', 0] if $n eq 'false';
    if ($n eq 'data') {
        require MIME::Base64;
        return ['data', MIME::Base64::decode_base64($e->textContent)];
    }
    return [$n, $e->textContent];
}

# Converts any plist file to XML with plistutil, then parses it.
sub plist_file {
    my ($path) = @_;
    my $r = run('plistutil', '-i', $path, '-o', "$path.xml", '-f', 'xml');
    die "plistutil $path: $r->{err}" if $r->{rc};
    return plist_string(slurp("$path.xml"));
}

# pval($node, 'PayloadContent', 2, 'Topic') walks dicts and arrays.
sub pval {
    my ($n, @path) = @_;
    for my $p (@path) {
        return undef unless $n;
        $n = $n->[0] eq 'dict' ? $n->[1]{$p} : $n->[1][$p];
    }
    return $n;
}

sub keys_of { [sort keys %{ $_[0][1] }] }

# ---- certificates -----------------------------------------------------------

sub free_port {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1:0',
                                  ReuseAddr => 1) or die "port: $!";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub _ok {
    my ($r, @cmd) = @_;
    die "@cmd: $r->{err}$r->{out}" if $r->{rc};
    return $r;
}

# issue_cert(name, subj => '/CN=x', ca => 'ca' (files in workdir) or undef
#            for self-signed, start => 'YYYYMMDDHHMMSSZ', end => ...,
#            ext => "extendedKeyUsage=clientAuth\n...", key => 'rsa')
# Writes NAME.key and NAME.crt in workdir; returns the cert path.
sub issue_cert {
    my ($name, %o) = @_;
    my $d = workdir();
    my $subj = $o{subj} // "/CN=$name";
    my @key = ('-newkey', 'rsa:2048');
    @key = ('-key', $o{keyfile}) if $o{keyfile};
    my $ext = $o{ext} // "basicConstraints=critical,CA:FALSE\n";
    spew("$d/$name.ext", "[x]\n$ext");
    _ok(run('openssl', 'req', '-new', @key, '-nodes', '-keyout',
            "$d/$name.key", '-subj', $subj, '-out', "$d/$name.csr"));
    my $ca = $o{ca};
    my ($cacrt, $cakey) = $ca ? ("$d/$ca.crt", "$d/$ca.key")
                              : ("$d/$name.crt.self", "$d/$name.key");
    if (!$ca) {
        # self-signed: a throw-away self certificate acts as the issuer
        _ok(run('openssl', 'req', '-x509', '-key', "$d/$name.key", '-subj',
                $subj, '-days', 1, '-out', $cacrt));
    }
    mkdir "$d/ca-db";
    spew("$d/ca-db/index.txt", '');
    spew("$d/ca-db/serial", sprintf("%08X\n", 4096 + int(rand(1 << 30))));
    spew("$d/ca.cnf", <<EOF);
[ca]
default_ca = dflt
[dflt]
database = $d/ca-db/index.txt
serial = $d/ca-db/serial
new_certs_dir = $d/ca-db
default_md = sha256
policy = any
unique_subject = no
preserve = yes
email_in_dn = yes
[any]
UID = optional
commonName = optional
countryName = optional
organizationName = optional
emailAddress = optional
EOF
    my @dates = $o{start}
        ? ('-startdate', $o{start}, '-enddate', $o{end})
        : ('-days', $o{days} // 30);
    my @self = $ca ? () : ('-selfsign');
    _ok(run('openssl', 'ca', '-batch', '-config', "$d/ca.cnf", @self,
            '-cert', $cacrt, '-keyfile', $cakey, '-in', "$d/$name.csr",
            '-out', "$d/$name.crt", @dates, '-extfile', "$d/$name.ext",
            '-extensions', 'x', '-notext'));
    return "$d/$name.crt";
}

sub der_of {
    my ($pem) = @_;
    my $r = run('openssl', 'x509', '-in', $pem, '-outform', 'DER', '-out',
                "$pem.der");
    die "der_of $pem: $r->{err}" if $r->{rc};
    return slurp("$pem.der");
}

sub fingerprint {
    my ($file, $form) = @_;
    my $r = run('openssl', 'x509', '-in', $file, '-inform', $form // 'PEM',
                '-noout', '-fingerprint', '-sha256');
    return $r->{rc} ? undef : $r->{out};
}

# ---- plain nginx (no module) ------------------------------------------------

sub start_nginx {
    my ($conf) = @_;
    my $d = workdir();
    my $port = free_port();
    mkdir "$d/ngx";
    $conf =~ s/%%PORT%%/$port/g;
    $conf =~ s/%%DIR%%/$d/g;
    spew("$d/ngx/nginx.conf", <<EOF);
daemon off;
master_process on;
worker_processes 1;
pid $d/ngx/nginx.pid;
error_log $d/ngx/error.log info;
events { worker_connections 64; }
http {
    client_body_temp_path $d/ngx/body;
    proxy_temp_path $d/ngx/proxy;
    fastcgi_temp_path $d/ngx/fastcgi;
    uwsgi_temp_path $d/ngx/uwsgi;
    scgi_temp_path $d/ngx/scgi;
    access_log $d/ngx/access.log;
$conf
}
EOF
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>>', "$d/ngx/stdout";
        open STDERR, '>>', "$d/ngx/stdout";
        exec '/usr/sbin/nginx', '-p', "$d/ngx/", '-c', "$d/ngx/nginx.conf",
             '-e', "$d/ngx/error.log" or POSIX::_exit(127);
    }
    my $deadline = time + 10;
    while (time < $deadline) {
        last if IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                      Timeout => 1);
        if (waitpid($pid, WNOHANG) == $pid) {
            die "nginx exited: " . (slurp("$d/ngx/error.log") // '')
                . (slurp("$d/ngx/stdout") // '');
        }
        sleep 0.05;
    }
    return { pid => $pid, port => $port };
}

sub stop_nginx {
    my ($n) = @_;
    return unless $n && $n->{pid};
    kill 'QUIT', $n->{pid};
    my $deadline = time + 10;
    while (time < $deadline) {
        return if waitpid($n->{pid}, WNOHANG) == $n->{pid};
        sleep 0.05;
    }
    kill 'KILL', $n->{pid};
    waitpid $n->{pid}, 0;
}

1;
