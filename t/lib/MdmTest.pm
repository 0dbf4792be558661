package MdmTest;

# Test harness: a temp dir per test file with its own CA, server and device
# certificates, a real redis-server on a unix socket with the Functions
# loaded, and the system nginx loading the freshly built module. Requests go
# over real TLS with client certificates.
#
#   my $t = MdmTest->new;                 # certs, redis
#   $t->start_nginx($t->conf);            # standard MDM server config
#   my $r = $t->put('/mdm/checkin', $plist, cert => 'dev1');
#   is $r->{status}, 200;
#
# On destruction it fails the file when error.log has [alert]/[emerg], a
# sanitizer report, or a worker that exited on a signal.

use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use File::Basename qw(dirname);
use File::Spec;
use IO::Socket::INET;
use IO::Socket::SSL;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);
use Cwd qw(abs_path);
use Exporter qw(import);

our @EXPORT = qw(wait_until);

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
our $TOPIC = 'com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9';

sub new {
    my ($class, %o) = @_;
    my $dir = tempdir('mdm-test-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{KEEP});
    chmod 0755, $dir;
    my $self = bless { dir => $dir, pid => $$, ports => {}, procs => [],
                       log_mark => 0, %o }, $class;
    diag("test dir $dir") if $ENV{KEEP};
    $self->{asan} = $ENV{MDM_ASAN} // $o{asan} // 0;
    $self->{module} = $ENV{MDM_MODULE}
        // "$ROOT/build/nginx/objs/ngx_http_mdm_module.so";
    if ($self->{asan}) {
        $self->{module} = "$ROOT/build/nginx-asan/objs/ngx_http_mdm_module.so";
    }
    $self->make_pki unless $o{no_pki};
    $self->start_redis unless $o{no_redis};
    return $self;
}

sub dir { $_[0]{dir} }
sub root { $ROOT }

sub port {
    my ($self, $name) = @_;
    return $self->{ports}{$name} //= do {
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1:0',
                                      ReuseAddr => 1) or die "port: $!";
        my $p = $s->sockport;
        close $s;
        $p;
    };
}

sub run_cmd {
    my ($self, @cmd) = @_;
    my $out = qx{@cmd 2>&1};
    die "command failed: @cmd\n$out" if $?;
    return $out;
}

sub spew {
    my ($self, $name, $data) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $data;
    close $fh;
    return $path;
}

sub slurp {
    my ($self, $path) = @_;
    $path = "$self->{dir}/$path" unless $path =~ m{^/};
    open my $fh, '<:raw', $path or return '';
    local $/;
    my $d = <$fh>;
    return $d;
}

# ---- PKI ---------------------------------------------------------------

sub make_pki {
    my ($self) = @_;
    my $d = $self->{dir};
    $self->spew('ext.cnf', <<'EOF');
[server]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
[noclient]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = emailProtection
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    $self->make_ca('ca', 'MDM Test Device CA');
    $self->run_cmd("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256"
        . " -nodes -keyout $d/server.key -subj /CN=localhost -out $d/server.csr");
    $self->run_cmd("openssl x509 -req -in $d/server.csr -CA $d/ca.crt"
        . " -CAkey $d/ca.key -CAcreateserial -days 30 -out $d/server.crt"
        . " -extfile $d/ext.cnf -extensions server");
}

sub make_ca {
    my ($self, $name, $cn) = @_;
    my $d = $self->{dir};
    $self->run_cmd("openssl req -x509 -new -newkey ec"
        . " -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $d/$name.key"
        . " -subj '/CN=$cn' -days 30 -out $d/$name.crt"
        . " -addext basicConstraints=critical,CA:TRUE"
        . " -addext keyUsage=critical,keyCertSign,cRLSign");
    return "$d/$name.crt";
}

# device_cert(name, ca => 'ca', days => 30, ext => 'client', cn => name,
#             start => '...', end => '...')
# returns { cert, key, sha256 } and caches by name.
sub device_cert {
    my ($self, $name, %o) = @_;
    return $self->{certs}{$name} if $self->{certs}{$name};
    my $d = $self->{dir};
    my $ca = $o{ca} // 'ca';
    my $cn = $o{cn} // $name;
    my $ext = $o{ext} // 'client';
    $self->run_cmd("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256"
        . " -nodes -keyout $d/$name.key -subj '/CN=$cn' -out $d/$name.csr");
    my $validity = $o{not_before}
        ? "-not_before $o{not_before} -not_after $o{not_after}"
        : "-days " . ($o{days} // 365);
    if ($o{not_before}) {
        # 'openssl x509 -req' has no -not_before in 3.0; use 'openssl ca'.
        $self->_ca_sign($name, $ca, $ext, $o{not_before}, $o{not_after});
    } else {
        $self->run_cmd("openssl x509 -req -in $d/$name.csr -CA $d/$ca.crt"
            . " -CAkey $d/$ca.key -CAcreateserial $validity"
            . " -out $d/$name.crt -extfile $d/ext.cnf -extensions $ext");
    }
    my $fp = $self->run_cmd("openssl x509 -in $d/$name.crt -noout"
                            . " -fingerprint -sha256");
    $fp =~ s/.*=//s;
    $fp =~ s/[:\s]//g;
    return $self->{certs}{$name} = {
        cert => "$d/$name.crt", key => "$d/$name.key", sha256 => lc $fp,
        name => $name,
    };
}

sub _ca_sign {
    my ($self, $name, $ca, $ext, $start, $end) = @_;
    my $d = $self->{dir};
    mkdir "$d/ca-db";
    $self->spew("ca-db/index.txt", '') unless -e "$d/ca-db/index.txt";
    $self->spew("ca-db/serial", sprintf("%04X\n", 4096 + int(rand(60000))));
    $self->spew('ca.cnf', <<EOF);
[ca]
default_ca = dflt
[dflt]
database = $d/ca-db/index.txt
serial = $d/ca-db/serial
new_certs_dir = $d/ca-db
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
EOF
    $self->run_cmd("openssl ca -batch -config $d/ca.cnf -cert $d/$ca.crt"
        . " -keyfile $d/$ca.key -in $d/$name.csr -out $d/$name.crt"
        . " -startdate $start -enddate $end -extfile $d/ext.cnf"
        . " -extensions $ext -notext");
}

# ---- Redis -------------------------------------------------------------

sub redis_sock { "$_[0]{dir}/redis.sock" }

# %o: aof (appendonly yes), args (more redis-server arguments, e.g.
# ['--appendfsync', 'always']), no_functions.
sub start_redis {
    my ($self, %o) = @_;
    my $d = $self->{dir};
    my @args = ('redis-server', '--port', '0', '--unixsocket', "$d/redis.sock",
        '--unixsocketperm', '777', '--dir', $d, '--save', '',
        '--appendonly', $o{aof} ? 'yes' : 'no', '--daemonize', 'no',
        '--logfile', "$d/redis.log", '--enable-debug-command', 'local',
        '--maxmemory-policy', 'noeviction',
        '--hash-max-listpack-value', '2048', @{ $o{args} // [] });
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        exec @args or die;
    }
    $self->{redis_pid} = $pid;
    for (1 .. 200) {
        last if -S "$d/redis.sock"
            && $self->rcli_raw('PING') =~ /PONG/;
        sleep 0.02;
    }
    $self->load_functions unless $o{no_functions};
}

sub load_functions {
    my ($self) = @_;
    for my $f (sort glob("$ROOT/redis-scripts/*.lua")) {
        my $out = qx{redis-cli -s $self->{dir}/redis.sock -x FUNCTION LOAD REPLACE < $f 2>&1};
        die "FUNCTION LOAD $f: $out" if $out =~ /ERR/;
    }
}

sub stop_redis {
    my ($self) = @_;
    return unless $self->{redis_pid};
    kill 'TERM', $self->{redis_pid};
    waitpid $self->{redis_pid}, 0;
    delete $self->{redis_pid};
    unlink $self->redis_sock;
}

sub restart_redis {
    my ($self) = @_;
    $self->stop_redis;
    $self->start_redis(no_functions => 1);
    $self->load_functions;
}

# redis-cli with each argument passed verbatim; returns raw output.
sub rcli_raw {
    my ($self, @args) = @_;
    my $pid = open(my $fh, '-|') // die;
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec 'redis-cli', '-s', "$self->{dir}/redis.sock", @args;
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    return $out // '';
}

# A Redis.pm client (connected lazily, reconnects after restarts).
sub redis {
    my ($self) = @_;
    require Redis;
    my $r = $self->{redis};
    if (!$r || !eval { $r->ping }) {
        $r = $self->{redis} = Redis->new(sock => $self->redis_sock,
                                         reconnect => 2, every => 100_000);
    }
    return $r;
}

sub fcall {
    my ($self, $fn, $keys, @args) = @_;
    return $self->redis->fcall($fn, scalar(@$keys), @$keys, @args);
}

# Digest of the whole data set (contents, not encodings: a set's DUMP
# changes with rehashing), to assert that bad input changed nothing.
sub redis_state {
    my ($self) = @_;
    my $r = $self->redis;
    require Digest::MD5;
    # the streams, and the once-a-minute mark of an audited refusal, are
    # records of the refusal itself
    my @keys = sort grep { !/^mdm:(events|audit)$|^mdm:\{[^}]*\}:refused$/ }
               $r->keys('mdm:*');
    my $s = '';
    for my $k (@keys) {
        my $type = $r->type($k);
        my @v = $type eq 'string' ? ($r->get($k))
              : $type eq 'hash' ? do { my %h = $r->hgetall($k);
                                       map { "$_\0$h{$_}" } sort keys %h }
              : $type eq 'set' ? sort($r->smembers($k))
              : $type eq 'zset' ? $r->zrange($k, 0, -1, 'WITHSCORES')
              : $type eq 'list' ? $r->lrange($k, 0, -1)
              : ($type);
        $s .= "$k=" . Digest::MD5::md5_hex(join "\0\0", map { $_ // '' } @v)
            . "\n";
    }
    return $s;
}

# ok() when the data set is as in $before; names the keys that differ.
sub state_unchanged {
    my ($self, $before, $name) = @_;
    my $now = $self->redis_state;
    return Test::More::pass($name) if $now eq $before;
    my %a = map { split /=/, $_, 2 } split /\n/, $before;
    my %b = map { split /=/, $_, 2 } split /\n/, $now;
    my @diff = grep { ($a{$_} // '') ne ($b{$_} // '') } sort keys %{{ %a, %b }};
    Test::More::fail($name);
    Test::More::diag("changed: @diff[0 .. ($#diff < 9 ? $#diff : 9)]");
    return 0;
}

sub events_len { $_[0]->redis->xlen('mdm:events') }

# $t->mdmctl(@args) or $t->mdmctl({ stdin => $text }, @args) -> { rc, sig,
# out, err }: mdmctl against this test's Redis when MDM_REDIS points at it.
# MDMCTL_WRAP="valgrind -q --error-exitcode=99 --leak-check=full" checks it.
sub mdmctl {
    my $self = shift;
    my $o = ref $_[0] eq 'HASH' ? shift : {};
    my $n = ++$self->{mdmctl_runs};
    my $d = $self->dir;
    my $in = $self->spew("ctl$n.in", $o->{stdin} // '');
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', $in or die;
        open STDOUT, '>', "$d/ctl$n.out" or die;
        open STDERR, '>', "$d/ctl$n.err" or die;
        exec split(' ', $ENV{MDMCTL_WRAP} // ''), "$ROOT/mdmctl/mdmctl", @_
            or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return { rc => $? >> 8, sig => $? & 127, out => $self->slurp("ctl$n.out"),
             err => $self->slurp("ctl$n.err") };
}

# The mdm library's VERSION, as redis-scripts/mdm.lua declares it.
sub lib_version {
    open my $fh, '<', "$ROOT/redis-scripts/mdm.lua" or die "mdm.lua: $!";
    local $/;
    return (<$fh> =~ /^local VERSION = '(\d+)'/m)[0];
}

# ---- nginx -------------------------------------------------------------

# The standard MDM server configuration; %o: extra (server-level lines),
# http (http-level lines), locations (replace the default locations),
# verify ('optional' by default), workers.
sub conf {
    my ($self, %o) = @_;
    my $verify = $o{verify} // 'optional';
    my $extra = $o{extra} // '';
    my $http = $o{http} // '';
    my $locations = $o{locations} // <<'EOF';
        location = /mdm/checkin { mdm_checkin; }
        location = /mdm/connect { mdm_command; }
        location = /mdm { mdm_endpoint; }
        location = /static { return 200 "static\n"; }
EOF
    my $redis = $o{redis} // "unix:%%TESTDIR%%/redis.sock";
    my $timeout = $o{redis_timeout} // '2s';
    return <<EOF;
%%GLOBALS%%
events { worker_connections 1024; }
http {
    %%HTTP_GLOBALS%%
    log_format mdm '\$status \$mdm_message_type id=\$mdm_enrollment_id '
                   'err="\$mdm_error" cmd=\$mdm_command_uuid '
                   'rt=\$mdm_request_type st=\$mdm_status '
                   'ddm=\$mdm_ddm_endpoint';
    access_log %%TESTDIR%%/access.log mdm;
    mdm_redis $redis timeout=$timeout;
    $http
    server {
        listen 127.0.0.1:%%PORT_https%% ssl;
        server_name localhost;
        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;
        ssl_client_certificate %%TESTDIR%%/ca.crt;
        ssl_verify_client $verify;
        client_max_body_size 64k;
        client_body_buffer_size 64k;
        mdm_topic $TOPIC;
        $extra
$locations
    }
}
EOF
}

sub write_conf {
    my ($self, $text) = @_;
    my $d = $self->{dir};
    my $workers = $self->{workers} // 1;
    my $master = $self->{valgrind} ? 'off' : 'on';
    my $globals = <<EOF;
load_module $self->{module};
daemon off;
master_process $master;
worker_processes $workers;
pid $d/nginx.pid;
error_log $d/error.log info;
EOF
    my $hg = join "\n    ", "client_body_temp_path $d/body;",
        "proxy_temp_path $d/proxy;", "fastcgi_temp_path $d/fastcgi;",
        "uwsgi_temp_path $d/uwsgi;", "scgi_temp_path $d/scgi;";
    $text =~ s/%%GLOBALS%%/$globals/g;
    $text =~ s/%%HTTP_GLOBALS%%/$hg/g;
    $text =~ s/%%TESTDIR%%/$d/g;
    $text =~ s/%%ROOT%%/$ROOT/g;
    $text =~ s/%%PORT_(\w+)%%/$self->port($1)/ge;
    $self->spew('nginx.conf', $text);
}

sub start_nginx {
    my ($self, $conf, %o) = @_;
    $self->{workers} = $o{workers} if $o{workers};
    $self->{valgrind} = $o{valgrind} if exists $o{valgrind};
    $self->write_conf($conf) if defined $conf;
    my $d = $self->{dir};
    unlink "$d/nginx.pid";
    my @wrap;
    local $ENV{ASAN_OPTIONS} = 'detect_leaks=0:abort_on_error=0';
    local $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1';
    if ($self->{asan}) {
        my ($lib) = glob('/usr/lib/x86_64-linux-gnu/libasan.so.*');
        $ENV{LD_PRELOAD} = $lib;
    }
    if ($self->{valgrind}) {
        @wrap = ('valgrind', '-q', '--error-exitcode=99',
                 "--log-file=$d/valgrind.log", '--leak-check=no');
    }
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>>', "$d/nginx.stdout";
        open STDERR, '>>', "$d/nginx.stdout";
        exec @wrap, '/usr/sbin/nginx', '-p', "$d/", '-c', "$d/nginx.conf",
             '-e', "$d/error.log" or die;
    }
    delete $ENV{LD_PRELOAD};
    $self->{nginx_pid} = $pid;
    my $deadline = time + ($self->{valgrind} ? 60 : 10);
    while (time < $deadline) {
        last if -s "$d/nginx.pid" && $self->_listening('https');
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{nginx_pid};
            die "nginx exited: " . $self->slurp('error.log')
                . $self->slurp('nginx.stdout');
        }
        sleep 0.05;
    }
    # Give workers a moment to connect to Redis.
    $self->wait_ready;
    return $pid;
}

# nginx -t on the written configuration (with the ASan runtime when needed).
sub nginx_test {
    my ($self) = @_;
    my $d = $self->{dir};
    my $pre = '';
    if ($self->{asan}) {
        my ($lib) = glob('/usr/lib/x86_64-linux-gnu/libasan.so.*');
        $pre = "LD_PRELOAD=$lib ASAN_OPTIONS=detect_leaks=0 ";
    }
    return qx{$pre/usr/sbin/nginx -t -p $d/ -c $d/nginx.conf -e $d/test.log 2>&1};
}

sub _listening {
    my ($self, $name) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:" . $self->port($name),
                                  Timeout => 1);
    return defined $s;
}

# Waits until the workers report their Redis connection ready.
sub wait_ready {
    my ($self, $n) = @_;
    $n //= $self->{workers} // 1;
    my $deadline = time + ($self->{valgrind} ? 60 : 10);
    while (time < $deadline) {
        my @l = $self->slurp('error.log') =~ /mdm: redis ready/g;
        return 1 if @l >= $n + ($self->{ready_seen} // 0);
        sleep 0.05;
    }
    return 0;
}

sub signal_nginx {
    my ($self, $sig) = @_;
    my $pid = $self->slurp('nginx.pid');
    chomp $pid;
    kill $sig, $pid if $pid;
}

sub stop_nginx {
    my ($self) = @_;
    my $pid = delete $self->{nginx_pid} or return;
    kill 'QUIT', $pid;
    my $deadline = time + 30;
    while (time < $deadline) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

# ---- HTTP client ---------------------------------------------------------

# put($path, $body, cert => name|undef, ct => content type,
#     headers => {..}, method => 'PUT', port => name, raw => 1)
# returns { status, headers => {lc name => value}, body }
sub put {
    my ($self, $path, $body, %o) = @_;
    my $sock = $self->connect(%o) or return { status => 0, error => "$!" };
    my $r = $self->request($sock, $path, $body, %o);
    close $sock;
    return $r;
}

sub connect {
    my ($self, %o) = @_;
    if ($o{plain}) {
        return IO::Socket::INET->new(
            PeerAddr => '127.0.0.1:' . $self->port($o{port} // 'http'),
            ($o{local} ? (LocalAddr => $o{local}) : ()),
            Timeout => $o{timeout} // 10);
    }
    my $c = exists $o{cert} ? $o{cert} : 'dev1';
    my %ssl = (SSL_verify_mode => SSL_VERIFY_NONE, SSL_hostname => 'localhost');
    if (defined $c) {
        my $dc = ref $c ? $c : $self->device_cert($c);
        $ssl{SSL_cert_file} = $dc->{cert};
        $ssl{SSL_key_file} = $dc->{key};
    }
    return IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1:' . $self->port($o{port} // 'https'),
        Timeout => $o{timeout} // 10, %ssl);
}

sub request {
    my ($self, $sock, $path, $body, %o) = @_;
    $body //= '';
    my $method = $o{method} // 'PUT';
    my $ct = exists $o{ct} ? $o{ct}
           : $path =~ /checkin/ ? 'application/x-apple-aspen-mdm-checkin'
           : 'application/x-apple-aspen-mdm; charset=UTF-8';
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\n";
    $req .= "Content-Type: $ct\r\n" if defined $ct;
    $req .= "Content-Length: " . length($body) . "\r\n"
        unless $o{no_length};
    for my $h (sort keys %{ $o{headers} // {} }) {
        $req .= "$h: $o{headers}{$h}\r\n";
    }
    $req .= "Connection: " . ($o{keepalive} ? 'keep-alive' : 'close') . "\r\n\r\n";
    print $sock $req . $body;
    return $self->read_response($sock, %o);
}

sub read_response {
    my ($self, $sock, %o) = @_;
    local $SIG{ALRM} = sub { die "timeout\n" };
    my $res = eval {
        alarm($o{timeout} // 10);
        my $head = '';
        while ($head !~ /\r\n\r\n/) {
            my $n = sysread($sock, my $buf, 1);
            last unless $n;
            $head .= $buf;
        }
        my ($status) = $head =~ m{^HTTP/1\.\d (\d+)};
        my %h;
        for (split /\r\n/, $head) {
            $h{lc $1} = $2 if /^([^:]+):\s*(.*)$/;
        }
        my $body = '';
        if (defined $h{'content-length'}) {
            my $want = $h{'content-length'};
            while (length($body) < $want) {
                my $n = sysread($sock, my $buf, $want - length $body);
                last unless $n;
                $body .= $buf;
            }
        } elsif (($h{'transfer-encoding'} // '') =~ /chunked/) {
            while (1) {
                my $line = '';
                while ($line !~ /\r\n$/) {
                    sysread($sock, my $c, 1) or last;
                    $line .= $c;
                }
                my $len = hex $line;
                last if !$len;
                my $chunk = '';
                while (length $chunk < $len + 2) {
                    sysread($sock, my $b, $len + 2 - length $chunk) or last;
                    $chunk .= $b;
                }
                $body .= substr($chunk, 0, $len);
            }
        }
        alarm 0;
        { status => $status // 0, headers => \%h, body => $body };
    };
    alarm 0;
    return $res // { status => 0, error => $@ };
}

# ---- logs ----------------------------------------------------------------

sub mark_log {
    my ($self) = @_;
    $self->{log_mark} = length $self->slurp('error.log');
}

sub log_since_mark {
    my ($self) = @_;
    my $l = $self->slurp('error.log');
    return substr($l, $self->{log_mark});
}

# Lines logged by the module since the mark, at error/warn level.
sub mdm_errors_since_mark {
    my ($self) = @_;
    return grep { /\[(error|warn|crit)\].*mdm/ } split /\n/,
        $self->log_since_mark;
}

# Polls $cond until it is true (1) or $timeout seconds pass (0).
sub wait_until {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.02;
    }
    return 0;
}

sub wait_for_log {
    my ($self, $re, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        return 1 if $self->log_since_mark =~ $re;
        sleep 0.05;
    }
    return 0;
}

# ---- plists --------------------------------------------------------------

sub xml_escape {
    my $s = shift;
    $s =~ s/&/&amp;/g;
    $s =~ s/</&lt;/g;
    $s =~ s/>/&gt;/g;
    return $s;
}

# plist(key => value, ...): strings, \1/\0 for booleans, {data => bytes},
# {int => n}, hash refs for dicts, array refs for arrays. Keys keep order.
sub plist {
    my (@kv) = @_;
    return qq{<?xml version="1.0" encoding="UTF-8"?>\n}
        . qq{<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN"}
        . qq{ "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n}
        . qq{<plist version="1.0">\n} . _pdict(@kv) . "</plist>\n";
}

sub _pdict {
    my (@kv) = @_;
    my $s = "<dict>\n";
    while (@kv) {
        my ($k, $v) = splice @kv, 0, 2;
        $s .= "<key>" . xml_escape($k) . "</key>" . _pval($v) . "\n";
    }
    return "$s</dict>";
}

sub _pval {
    my $v = shift;
    if (ref $v eq 'SCALAR') { return $$v ? '<true/>' : '<false/>' }
    if (ref $v eq 'ARRAY') {
        return "<array>" . join('', map { _pval($_) } @$v) . "</array>";
    }
    if (ref $v eq 'HASH' && exists $v->{data}) {
        require MIME::Base64;
        return "<data>" . MIME::Base64::encode_base64($v->{data}, '') . "</data>";
    }
    if (ref $v eq 'HASH' && exists $v->{int}) { return "<integer>$v->{int}</integer>" }
    if (ref $v eq 'HASH' && exists $v->{dict}) { return _pdict(@{ $v->{dict} }) }
    return "<string>" . xml_escape($v) . "</string>";
}

# Common device messages.
sub authenticate {
    my ($self, $udid, %extra) = @_;
    return plist(MessageType => 'Authenticate', Topic => $TOPIC, UDID => $udid,
                 SerialNumber => "SN$udid", ProductName => 'iPad2,5',
                 OSVersion => '17.1', BuildVersion => '21B74', %extra);
}

sub token_update {
    my ($self, $udid, %extra) = @_;
    my $token = $extra{_token} // pack('H*', substr(unpack('H*', $udid)
                                  . ('ab' x 32), 0, 64));
    delete $extra{_token};
    return plist(MessageType => 'TokenUpdate', Topic => $TOPIC, UDID => $udid,
                 Token => { data => $token },
                 PushMagic => "PM-$udid", AwaitingConfiguration => \0, %extra);
}

# Authenticate + TokenUpdate for $udid with certificate $cert; dies on error.
sub enroll {
    my ($self, $udid, $cert) = @_;
    $cert //= $udid;
    for my $m ($self->authenticate($udid), $self->token_update($udid)) {
        my $r = $self->put('/mdm/checkin', $m, cert => $cert);
        die "enroll $udid: $r->{status} " . ($r->{error} // '')
            unless $r->{status} == 200;
    }
}

# ---- teardown -------------------------------------------------------------

sub check_logs {
    my ($self) = @_;
    my $log = $self->slurp('error.log') . $self->slurp('nginx.stdout');
    my @bad = grep {
        /\[(alert|emerg)\]/ || /Sanitizer|runtime error:/
            || /exited on signal/
    } split /\n/, $log;
    # nginx itself logs this alert when a test deliberately kills a worker.
    @bad = grep { !/$self->{allow_alert}/ } @bad if $self->{allow_alert};
    ok(!@bad, 'no alerts, sanitizer reports or crashed workers')
        or diag(join "\n", @bad[0 .. ($#bad < 20 ? $#bad : 20)]);
    if ($self->{valgrind}) {
        my $vg = $self->slurp('valgrind.log');
        ok($vg !~ /\S/, 'valgrind clean') or diag($vg);
    }
}

# Stops everything and runs the log checks; call before done_testing.
sub finish {
    my ($self) = @_;
    $self->stop_nginx;
    $self->stop_redis;
    for my $p (@{ $self->{procs} }) { kill 'TERM', $p; waitpid $p, 0 }
    $self->{procs} = [];
    $self->check_logs if -e "$self->{dir}/error.log";
    $self->{no_check} = 1;
}

sub DESTROY {
    my ($self) = @_;
    return if $self->{pid} != $$;
    $self->stop_nginx;
    $self->stop_redis;
    for my $p (@{ $self->{procs} }) { kill 'TERM', $p; waitpid $p, 0 }
    $self->check_logs if -e "$self->{dir}/error.log" && !$self->{no_check};
}

1;
