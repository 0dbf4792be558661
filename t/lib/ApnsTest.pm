package ApnsTest;

# Harness for the APNs sender tests (t/50-apnsd*.t): MdmTest (temp dir,
# CA + server certificate, redis with the Functions) plus push
# certificates, the HTTP/2 mock APNs (t/lib/mock-apns.js) and mdm-apnsd.
#
#   my $t = ApnsTest->new;
#   my $c = $t->push_cert('p1');              # topic com.apple.mgmt.External.<uuid>
#   $t->start_mock;                           # rules: $t->rules({...})
#   $t->enroll('dev1', topic => $c->{topic});
#   $t->produce('dev1');
#   my $pid = $t->start_apnsd(cert => [$c->{pem}]);
#   $t->wait_for(sub { $t->requests >= 1 }, 10, 'pushed');

use strict;
use warnings;
use parent 'MdmTest';
use Test::More;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);
use Digest::SHA qw(sha256_hex);

our $BIN = $ENV{MDM_APNSD} // (-x "$MdmTest::ROOT/apnsd/mdm-apnsd-asan"
                                   ? "$MdmTest::ROOT/apnsd/mdm-apnsd-asan"
                                   : "$MdmTest::ROOT/apnsd/mdm-apnsd");
our $MOCK = "$MdmTest::ROOT/t/lib/mock-apns.js";

sub new {
    my ($class, %o) = @_;
    my $self = MdmTest::new($class, %o);
    $self->{apnsd} = {};
    $self->make_ca('pushca', 'Test Push CA');     # the CA the mock trusts
    $self->make_ca('rogueca', 'Untrusted CA');    # one it does not
    return $self;
}

sub bin { $BIN }

sub uuid {
    my @b = map { int rand 256 } 1 .. 16;
    $b[6] = ($b[6] & 0x0f) | 0x40;
    $b[8] = ($b[8] & 0x3f) | 0x80;
    my $h = join '', map { sprintf '%02x', $_ } @b;
    return join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4),
                     substr($h, 16, 4), substr($h, 20, 12);
}

sub topic_for { "com.apple.mgmt.External." . $_[1] }

# push_cert(name, topic => ..., ca => 'pushca', p12 => password, days => 30,
#           expired => 1) -> { topic, cert, key, pem (cert+key), p12 }
sub push_cert {
    my ($self, $name, %o) = @_;
    my $d = $self->dir;
    my $topic = $o{topic} // $self->topic_for(uuid());
    my $ca = $o{ca} // 'pushca';
    $self->run_cmd("openssl req -new -newkey rsa:2048 -nodes -keyout $d/$name.key"
        . " -subj '/UID=$topic/CN=APSP:$name/C=US' -out $d/$name.csr");
    my $days = $o{expired} ? -1 : $o{days} // 30;     # -1: expired yesterday
    $self->run_cmd("openssl x509 -req -in $d/$name.csr -CA $d/$ca.crt"
        . " -CAkey $d/$ca.key -CAcreateserial -days $days"
        . " -out $d/$name.crt -extfile $d/ext.cnf -extensions client");
    my $pem = $self->spew("$name.pem",
        $self->slurp("$name.crt") . $self->slurp("$name.key"));
    my $r = { topic => $topic, cert => "$d/$name.crt", key => "$d/$name.key",
              pem => $pem, name => $name };
    if (defined $o{p12}) {
        $self->run_cmd("openssl pkcs12 -export -in $d/$name.crt -inkey $d/$name.key"
            . " -name push -out $d/$name.p12 -passout 'pass:$o{p12}'");
        $r->{p12} = "$d/$name.p12";
    }
    return $r;
}

# The device token of an enrollment id in these tests: 64 hex digits.
sub token_of { sha256_hex($_[1]) }

# ---- mock APNs -----------------------------------------------------------

sub rules {
    my ($self, $rules) = @_;
    my $p = $self->dir . '/rules.json';
    $self->spew("rules.json.tmp", encode_json($rules));
    rename "$p.tmp", $p or die "rename: $!";
    sleep 0.05;                       # the mock re-reads it within 20 ms
}

# start_mock(delay => ms, max_streams => n, any_client => 1, log => 0)
sub start_mock {
    my ($self, %o) = @_;
    my $d = $self->dir;
    $self->rules({ default => { status => 200 } }) unless -e "$d/rules.json";
    my @args = ('node', $MOCK, '--port', $self->port('apns'), '--cert', "$d/server.crt",
                '--key', "$d/server.key", '--ca', "$d/pushca.crt",
                '--rules', "$d/rules.json");
    push @args, '--log', "$d/mock.jsonl" unless defined $o{log} && !$o{log};
    push @args, '--delay', $o{delay} if $o{delay};
    push @args, '--max-streams', $o{max_streams} if $o{max_streams};
    push @args, '--any-client' if $o{any_client};
    unlink "$d/mock.out";
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>', "$d/mock.out";
        open STDERR, '>>', "$d/mock.err";
        exec @args or die "exec node: $!";
    }
    $self->{mock_pid} = $pid;
    $self->wait_for(sub { $self->slurp('mock.out') =~ /listening/ }, 10)
        or die "mock did not start: " . $self->slurp('mock.err');
    return $pid;
}

sub stop_mock {
    my ($self) = @_;
    my $pid = delete $self->{mock_pid} or return;
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

sub mock_log {
    my ($self, $event) = @_;
    my @out;
    for my $l (split /\n/, $self->slurp('mock.jsonl')) {
        my $r = eval { decode_json($l) } or next;
        push @out, $r if $r->{event} eq $event;
    }
    return @out;
}

sub requests { $_[0]->mock_log('request') }
sub sessions { $_[0]->mock_log('session') }

# number of requests per token
sub token_counts {
    my ($self) = @_;
    my %n;
    $n{ $_->{token} // '' }++ for $self->requests;
    return \%n;
}

# ---- enrollments and the push list ---------------------------------------

# enroll(id, topic => .., token => hex, magic => .., enabled => 1, %extra)
sub enroll {
    my ($self, $id, %o) = @_;
    my ($dev) = split /:/, $id;
    my %f = (token => $o{token} // $self->token_of($id),
             push_magic => $o{magic} // "PM-$id", topic => $o{topic} // die('topic'),
             enabled => $o{enabled} // 1, token_update_ms => $o{token_update_ms}
                                               // int(time * 1000) - 1000);
    delete @o{qw(token magic topic enabled token_update_ms)};
    %f = (%f, %o);
    $self->redis->hset("mdm:{$dev}:enr:$id", %f);
    return \%f;
}

sub enr {
    my ($self, $id) = @_;
    my ($dev) = split /:/, $id;
    return { $self->redis->hgetall("mdm:{$dev}:enr:$id") };
}

# The producer protocol from KEYS.md.
sub produce {
    my ($self, @ids) = @_;
    my $r = $self->redis;
    for my $id (@ids) {
        $r->rpush('mdm:push:q', $id) if $r->sadd('mdm:push:pending', $id);
    }
}

# Commands, one per line, through one redis-cli pipeline.
sub redis_batch {
    my ($self, @lines) = @_;
    my $f = $self->spew('batch.txt', join '', map { "$_\n" } @lines);
    my $sock = $self->redis_sock;
    qx{redis-cli -s $sock < $f > /dev/null};
}

# Many at once, with the producer protocol in one call per id.
sub produce_many {
    my ($self, @ids) = @_;
    $self->redis_batch(map { "FCALL mdm_push_enqueue 2 mdm:push:q mdm:push:pending $_" } @ids);
}

sub enroll_many {
    my ($self, $topic, @ids) = @_;
    my $now = int(time * 1000) - 1000;
    $self->redis_batch(map {
        my ($dev) = split /:/, $_;
        "HSET mdm:{$dev}:enr:$_ token " . $self->token_of($_)
            . " push_magic PM-$_ topic $topic enabled 1 token_update_ms $now"
    } @ids);
}

sub llen { $_[0]->redis->llen($_[1]) }

sub events {
    my ($self, %match) = @_;
    my @out;
    for my $e ($self->redis->xrange('mdm:events', '-', '+')) {
        my %f = @{ $e->[1] };
        next if grep { ($f{$_} // '') ne $match{$_} } keys %match;
        push @out, \%f;
    }
    return @out;
}

sub stats {
    my ($self) = @_;
    return { $self->fcall('mdm_push_stats', ['mdm:push:q', 'mdm:push:pending',
                                             'mdm:push:stats']) };
}

# ---- mdm-apnsd -------------------------------------------------------------------

# start_apnsd(name => 'a1', cert => [paths], opts => { option => value },
#             env => { VAR => value }) -> pid. Logs to apnsd-NAME.log.
sub start_apnsd {
    my ($self, %o) = @_;
    my $d = $self->dir;
    my $name = $o{name} // 'a1';
    my %opt = (
        'redis' => 'unix:' . $self->redis_sock,
        'redis-timeout' => '1s',
        'apns' => 'https://127.0.0.1:' . $self->port('apns'),
        'ca-file' => "$d/ca.crt",
        'name' => $name,
        'log' => "$d/apnsd-$name.log",
        'log-level' => 'info',
        'retry-base' => '100ms',
        'retry-max' => '500ms',
        'breaker-pause' => '200ms',
        'breaker-max' => '500ms',
        'alive-ttl' => '1500ms',
        'recover-interval' => '300ms',
        'stats-interval' => '2s',
        'cert-check' => '200ms',
        'shutdown-timeout' => '3s',
        %{ $o{opts} // {} },
    );
    my $conf = "# written by ApnsTest\n";
    for my $k (sort keys %opt) {
        next unless defined $opt{$k};
        $conf .= "$k $opt{$k}\n";
    }
    $conf .= "cert $_\n" for @{ $o{cert} // [] };
    $self->spew("apnsd-$name.conf", $conf);
    my $pid = fork // die;
    if (!$pid) {
        $ENV{$_} = $o{env}{$_} for keys %{ $o{env} // {} };
        $ENV{ASAN_OPTIONS} = 'detect_leaks=1:abort_on_error=0';
        $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1';
        open STDOUT, '>>', "$d/apnsd-$name.stderr";
        open STDERR, '>>', "$d/apnsd-$name.stderr";
        exec $BIN, '--config', "$d/apnsd-$name.conf", @{ $o{args} // [] } or die;
    }
    $self->{apnsd}{$pid} = $name;
    return $pid;
}

# stop_apnsd(pid, sig = TERM, timeout) -> exit status ($?), undef on timeout
sub stop_apnsd {
    my ($self, $pid, $sig, $timeout) = @_;
    kill $sig // 'TERM', $pid;
    my $deadline = time + ($timeout // 15);
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{apnsd}{$pid};
            return $?;
        }
        sleep 0.05;
    }
    return undef;
}

sub apnsd_log { $_[0]->slurp("apnsd-" . ($_[1] // 'a1') . ".log") }

sub wait_for {
    my ($self, $cond, $timeout, $what) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    my $ok = $cond->();
    diag("timed out waiting for $what") if !$ok && $what;
    return $ok;
}

# No sanitizer report, crash or unexpected [crit] in any sender's output.
sub check_apnsd {
    my ($self, %o) = @_;
    my $d = $self->dir;
    for my $f (sort glob("$d/apnsd-*.stderr"), sort glob("$d/apnsd-*.log")) {
        my $text = $self->slurp($f);
        my @bad = grep { /Sanitizer|runtime error:|Segmentation|double free|\[crit\]/ }
                  split /\n/, $text;
        @bad = grep { !/$o{allow}/ } @bad if $o{allow};
        (my $short = $f) =~ s{.*/}{};
        ok(!@bad, "$short: no sanitizer reports, crashes or unexpected [crit]")
            or diag(join "\n", @bad[0 .. ($#bad < 15 ? $#bad : 15)]);
    }
}

sub finish_apnsd {
    my ($self, %o) = @_;
    for my $pid (keys %{ $self->{apnsd} }) {
        my $st = $self->stop_apnsd($pid, 'TERM', 15);
        if (!defined $st) {
            kill 'KILL', $pid;
            waitpid $pid, 0;
            fail("mdm-apnsd $pid stops on SIGTERM");
        }
    }
    $self->stop_mock;
    $self->check_apnsd(%o);
}

sub DESTROY {
    my ($self) = @_;
    return if $self->{pid} != $$;
    for my $pid (keys %{ $self->{apnsd} // {} }) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
    $self->stop_mock;
    $self->SUPER::DESTROY();
}

1;
