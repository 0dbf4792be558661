package MdmSentinel;

# A Redis primary, its replica and three sentinels on loopback TCP for the
# failover tests (t/26-failover-*.t), started under an MdmTest's directory
# and stopped with it (their pids go to $t->{procs}). Timings are short so
# a failover takes about two seconds: down-after 1.5 s, failover-timeout
# 3 s. With 400 ms, a promoted replica that stalled briefly on a loaded CI
# machine was failed over again, back to the restarted (empty) old one.

use strict;
use warnings;
use Time::HiRes qw(sleep time);
use MdmTest;

sub new {
    my ($class, $t, %o) = @_;
    my $self = bless { t => $t, pids => {}, master => 'mdm' }, $class;
    $self->{ports} = [map { $t->port("redis$_") } 0, 1];
    $self->{sports} = [map { $t->port("sentinel$_") } 0 .. 2];
    $self->start_redis(0);
    $self->start_redis(1, replicaof => $self->{ports}[0]);
    $self->load_functions($self->{ports}[0]);
    MdmTest::wait_until(sub {
        $self->cli(1, 'INFO', 'replication') =~ /master_link_status:up/ }, 10)
        or die "replica not in sync";
    $self->start_sentinel($_) for 0 .. 2;
    MdmTest::wait_until(sub {
        $self->scli(0, 'SENTINEL', 'sentinels', 'mdm') =~ /runid/
            && $self->scli(0, 'SENTINEL', 'replicas', 'mdm') =~ /runid/ }, 15)
        or die "sentinels did not see each other and the replica";
    return $self;
}

sub port { $_[0]{ports}[$_[1]] }

# The mdm_redis line's address part.
sub spec {
    my ($self) = @_;
    return 'sentinel=' . join(',', map { "127.0.0.1:$_" } @{ $self->{sports} })
        . " master=$self->{master}";
}

sub _spawn {
    my ($self, $name, @cmd) = @_;
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        exec @cmd or die;
    }
    $self->{pids}{$name} = $pid;
    push @{ $self->{t}{procs} }, $pid;
    return $pid;
}

# %o: replicaof (a port), args (more arguments)
sub start_redis {
    my ($self, $i, %o) = @_;
    my $d = $self->{t}->dir;
    my $p = $self->{ports}[$i];
    mkdir "$d/r$i";
    $self->_spawn("redis$i", 'redis-server', '--port', $p, '--bind', '127.0.0.1',
        '--dir', "$d/r$i", '--save', '', '--appendonly', 'no',
        '--logfile', "$d/redis$i.log", '--maxmemory-policy', 'noeviction',
        '--hash-max-listpack-value', '2048',
        # a new replica syncs at once (the default waits 5 s for others)
        '--repl-diskless-sync-delay', '0',
        ($o{replicaof} ? ('--replicaof', '127.0.0.1', $o{replicaof}) : ()),
        @{ $o{args} // [] });
    MdmTest::wait_until(sub { $self->cli($i, 'PING') =~ /PONG/ }, 10)
        or die "redis$i did not start";
}

sub start_sentinel {
    my ($self, $i) = @_;
    my $t = $self->{t};
    my $d = $t->dir;
    my $p0 = $self->{ports}[0];
    $t->spew("sentinel$i.conf", <<EOF);
port $self->{sports}[$i]
bind 127.0.0.1
dir $d
logfile $d/sentinel$i.log
sentinel monitor mdm 127.0.0.1 $p0 2
sentinel down-after-milliseconds mdm 1500
sentinel failover-timeout mdm 3000
sentinel parallel-syncs mdm 1
EOF
    $self->_spawn("sentinel$i", 'redis-sentinel', "$d/sentinel$i.conf");
    MdmTest::wait_until(sub { $self->scli($i, 'PING') =~ /PONG/ }, 10)
        or die "sentinel$i did not start";
}

sub load_functions {
    my ($self, $port) = @_;
    for my $f (sort glob(MdmTest::root() . '/redis-scripts/*.lua')) {
        my $out = qx{redis-cli -p $port -x FUNCTION LOAD REPLACE < $f 2>&1};
        die "FUNCTION LOAD $f: $out" if $out =~ /ERR/;
    }
}

sub _cli {
    my ($port, @args) = @_;
    my $pid = open(my $fh, '-|') // die;
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec 'redis-cli', '-p', $port, @args;
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    return $out // '';
}

sub cli { my ($self, $i, @a) = @_; _cli($self->{ports}[$i], @a) }
sub scli { my ($self, $i, @a) = @_; _cli($self->{sports}[$i], @a) }
sub cli_port { my ($self, $p, @a) = @_; _cli($p, @a) }

# The primary's port as sentinel $i (default 0) reports it.
sub primary_port {
    my ($self, $i) = @_;
    my $out = $self->scli($i // 0, 'SENTINEL', 'get-master-addr-by-name',
                          $self->{master});
    my @l = split /\n/, $out;
    return $l[1];
}

# How many sentinels report redis $i as the primary: one that is slow to
# answer on a loaded machine must not hide a promotion.
sub promoted {
    my ($self, $i) = @_;
    return scalar grep { ($self->primary_port($_) // 0) == $self->port($i) }
                       0 .. $#{ $self->{sports} };
}

sub kill_proc {
    my ($self, $name, $sig) = @_;
    my $pid = delete $self->{pids}{$name} or return;
    kill $sig // 'KILL', $pid;
    waitpid $pid, 0;
    $self->{t}{procs} = [grep { $_ != $pid } @{ $self->{t}{procs} }];
}

sub signal {
    my ($self, $name, $sig) = @_;
    kill $sig, $self->{pids}{$name};
}

1;
