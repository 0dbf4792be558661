package WebhookTest;

# Harness for the webhook deliverer tests (t/55-webhookd*.t): MdmTest (temp
# dir, redis with the Functions, nginx when asked) plus the HTTP receiver
# (t/lib/webhook-receiver.js, node) and mdm-webhookd.
#
#   my $t = WebhookTest->new;
#   $t->start_receiver;                      # rules: $t->rules({...})
#   my $pid = $t->start_webhookd(opts => { 'max-attempts' => 3 });
#   $t->seed('Authenticate', 'DEV1');        # an XADD to mdm:events
#   $t->wait_for(sub { $t->received >= 1 }, 10, 'delivered');

use strict;
use warnings;
use parent 'MdmTest';
use Test::More;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);

our $BIN = $ENV{MDM_WEBHOOKD}
    // (-x "$MdmTest::ROOT/webhookd/mdm-webhookd-asan"
        ? "$MdmTest::ROOT/webhookd/mdm-webhookd-asan"
        : "$MdmTest::ROOT/webhookd/mdm-webhookd");
our $RECEIVER = "$MdmTest::ROOT/t/lib/webhook-receiver.js";

sub new {
    my ($class, %o) = @_;
    my $self = MdmTest::new($class, %o);
    $self->{webhookd} = {};
    return $self;
}

sub bin { $BIN }

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

sub rules {
    my ($self, $rules) = @_;
    my $p = $self->dir . '/rules.json';
    $self->spew("rules.json.tmp", encode_json($rules));
    rename "$p.tmp", $p or die "rename: $!";
}

# start_receiver(brief => 1, delay => ms, log => 0)
sub start_receiver {
    my ($self, %o) = @_;
    my $d = $self->dir;
    $self->rules({ default => 'ok' }) unless -e "$d/rules.json";
    my @args = ('node', $RECEIVER, '--port', $self->port('hook'),
                '--rules', "$d/rules.json");
    push @args, '--log', "$d/hook.jsonl" unless defined $o{log} && !$o{log};
    push @args, '--brief' if $o{brief};
    push @args, '--delay', $o{delay} if $o{delay};
    unlink "$d/hook.out";
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>', "$d/hook.out";
        open STDERR, '>>', "$d/hook.err";
        exec @args or die "exec node: $!";
    }
    $self->{recv_pid} = $pid;
    $self->wait_for(sub { $self->slurp('hook.out') =~ /listening/ }, 10)
        or die "receiver did not start: " . $self->slurp('hook.err');
    return $pid;
}

sub stop_receiver {
    my ($self) = @_;
    my $pid = delete $self->{recv_pid} or return;
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

# every request the receiver logged, parsed (body decoded when logged)
sub hook_log {
    my ($self) = @_;
    my @out;
    for my $l (split /\n/, $self->slurp('hook.jsonl')) {
        my $r = eval { decode_json($l) } or next;
        if (defined $r->{body}) {
            $r->{json} = eval { decode_json($r->{body}) };
            if (my $j = $r->{json}) {
                my $in = $j->{checkin_event} || $j->{acknowledge_event} || {};
                $r->{event_id} = $j->{event_id};
                $r->{topic} = $j->{topic};
                $r->{udid} = $in->{udid} // $in->{enrollment_id};
            }
        }
        push @out, $r;
    }
    return @out;
}

# requests answered 200
sub delivered { grep { $_->{mode} eq 'ok' } $_[0]->hook_log }
sub received {
    my $n = () = $_[0]->slurp('hook.jsonl') =~ /^\{"t":\d+,"mode":"ok"/mg;
    return $n;
}

# brief log (--brief), quickly: [event_id, udid] of each request answered 200
sub delivered_brief {
    my ($self) = @_;
    return grep { defined }
        map { /^\{"t":\d+,"mode":"ok".*"event_id":"([^"]+)","topic":"[^"]*",
                 "udid":"([^"]*)"/x ? [$1, $2] : undef }
        split /\n/, $self->slurp('hook.jsonl');
}

# start_webhookd(opts => {...}, args => [...], env => {...}, name => 'w1')
sub start_webhookd {
    my ($self, %o) = @_;
    my $d = $self->dir;
    my $name = $o{name} // 'w1';
    my %opt = (
        'url' => 'http://127.0.0.1:' . $self->port('hook') . '/hook',
        'redis' => 'unix:' . $self->redis_sock,
        'redis-timeout' => '1s',
        'name' => $name,
        'from-start' => 'yes',
        'timeout' => '2s',
        'connect-timeout' => '1s',
        'retry-min' => '50ms',
        'retry-max' => '300ms',
        'poll' => '20ms',
        %{ $o{opts} // {} },
    );
    my $conf = "# written by WebhookTest\n";
    for my $k (sort keys %opt) {
        next unless defined $opt{$k};
        $conf .= "$k $opt{$k}\n";
    }
    $self->spew("webhookd-$name.conf", $conf);
    my $pid = fork // die;
    if (!$pid) {
        $ENV{$_} = $o{env}{$_} for keys %{ $o{env} // {} };
        $ENV{ASAN_OPTIONS} = 'detect_leaks=1:abort_on_error=0';
        $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1';
        open STDOUT, '>>', "$d/webhookd-$name.log";
        open STDERR, '>>', "$d/webhookd-$name.log";
        exec $BIN, '--config', "$d/webhookd-$name.conf", @{ $o{args} // [] }
            or die;
    }
    $self->{webhookd}{$pid} = $name;
    return $pid;
}

sub stop_webhookd {
    my ($self, $pid, $sig) = @_;
    kill $sig // 'TERM', $pid;
    waitpid $pid, 0;
    my $st = $?;
    delete $self->{webhookd}{$pid};
    return $st;
}

sub webhookd_log { $_[0]->slurp("webhookd-" . ($_[1] // 'w1') . ".log") }

# seed(type, enrollment id, field => value...): one mdm:events entry as
# mdm.lua writes it; returns its id
sub seed {
    my ($self, $type, $id, %f) = @_;
    my $ms = $f{ms} // int(time * 1000);
    delete $f{ms};
    return $self->redis->xadd('mdm:events', '*', type => $type, id => $id,
                              ms => $ms, %f);
}

sub stats {
    my ($self) = @_;
    my %s = @{ $self->fcall('mdm_webhook_stats',
        ['mdm:webhook:backlog', 'mdm:webhook:dead', 'mdm:webhook:stats']) };
    return \%s;
}

# no sanitizer report or crash in any deliverer's log
sub check_webhookd_logs {
    my ($self) = @_;
    my $log = join '', map { $self->slurp($_) }
        grep { -e } map { "$self->{dir}/webhookd-$_.log" }
        values %{ $self->{webhookd} }, 'w1';
    unlike $log, qr/Sanitizer|runtime error:|\bcrit:/, 'no sanitizer report '
        . 'or crash in mdm-webhookd';
}

sub finish {
    my ($self) = @_;
    for my $pid (keys %{ $self->{webhookd} }) {
        $self->stop_webhookd($pid);
    }
    $self->stop_receiver;
    $self->check_webhookd_logs;
    MdmTest::finish($self);
}

sub DESTROY {
    my ($self) = @_;
    return if $self->{pid} != $$;
    kill 'KILL', $_ for keys %{ $self->{webhookd} // {} };
    kill 'TERM', $self->{recv_pid} if $self->{recv_pid};
    MdmTest::DESTROY($self);
}

1;
