# The Debian packages (make deb) install on this machine, the module loads
# through modules-enabled and passes nginx -t with conf.example's locations,
# the tools run, and a purge leaves nothing behind. Needs root (dpkg).
#
# Other tests are not disturbed: they run /usr/sbin/nginx with their own
# -c and load build/nginx/objs/*.so, and the package's dpkg trigger only
# reloads a system nginx that runs (none does here). The system user
# mdm-apnsd and group mdm stay after the purge, as Debian policy has it
# (files they owned may still exist elsewhere).

use strict;
use warnings;
use Test::More;
use File::Path qw(make_path);
use FindBin;
use lib "$FindBin::Bin/lib";
use MdmTest;

plan skip_all => 'installs packages: run as root' if $>;
for my $tool (qw(dpkg-buildpackage dh_nginx apt-get lintian)) {
    plan skip_all => "$tool missing (make deps)"
        unless grep { -x "$_/$tool" } split /:/, $ENV{PATH};
}

my $ROOT = $MdmTest::ROOT;
my @PKGS = qw(libnginx-mod-http-mdm mdm-apnsd mdm-webhookd mdmctl
              mdm-redis-functions);
my $APT = 'DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120'
    . ' -y -q';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-mdm.conf';

sub cat_file {
    open my $fh, '<', $_[0] or return '';
    local $/;
    return <$fh>;
}

sub sh {
    my ($cmd) = @_;
    my $out = qx{$cmd 2>&1};
    return ($? >> 8, $out);
}

# make deb is a no-op when build/deb is newer than the sources
my ($rc, $out) = sh("make -s -C $ROOT deb");
is($rc, 0, 'make deb (lintian clean)') or diag($out);
my %deb = map {
    my ($f) = glob("$ROOT/build/deb/${_}_*.deb");
    ($_ => $f);
} @PKGS;
ok($deb{$_}, "$_ built") for @PKGS;
if (grep { !$_ } values %deb) { done_testing; exit 1 }

# every file each package ships, to check the purge removed them
my %files;
for my $p (@PKGS) {
    for (split /\n/, qx{dpkg-deb -c $deb{$p}}) {
        my @f = split ' ', $_;
        next if $f[0] =~ /^d/;
        (my $path = $f[5]) =~ s{^\./}{/};
        push @{ $files{$p} }, $path;
    }
}

# a test that dies half-way still leaves the machine as it found it
my $installed;
END { sh("$APT purge @PKGS") if $installed; }
$installed = 1;
($rc, $out) = sh("$APT install " . join(' ', map { $deb{$_} } @PKGS));
is($rc, 0, 'apt-get install ./build/deb/*.deb') or diag($out);

# ---- files in place ---------------------------------------------------
ok(-f '/usr/lib/nginx/modules/ngx_http_mdm_module.so', 'module .so');
is(cat_file('/usr/share/nginx/modules-available/mod-http-mdm.conf'),
   "load_module modules/ngx_http_mdm_module.so;\n", 'the snippet');
is(readlink($ENABLED), '/usr/share/nginx/modules-available/mod-http-mdm.conf',
   'enabled in modules-enabled on installation');
like(qx{dpkg-query -W -f='\${Depends}' libnginx-mod-http-mdm},
     qr/\bnginx-abi-[0-9.]+-\d+\b/, 'depends on the nginx ABI');
my ($abi) = qx{dpkg-query -W -f='\${Provides}' nginx}
    =~ /(nginx-abi-[^\s,]+)/;
like(qx{dpkg-query -W -f='\${Depends}' libnginx-mod-http-mdm},
     qr/\Q$abi\E/, "... the one the installed nginx provides ($abi)");

ok(-x '/usr/sbin/mdm-apnsd' && -x '/usr/bin/mdmctl'
   && -x '/usr/bin/mdm-redis-load', 'binaries');
ok(-f "/usr/share/mdm/redis-functions/$_", "redis-functions/$_")
    for qw(mdm.lua push.lua metrics.lua webhook.lua);
ok(-f '/usr/share/doc/mdm-redis-functions/examples/users.acl', 'users.acl');

my @pw = getpwnam('mdm-apnsd');
ok(@pw, 'system user mdm-apnsd');
my $gid = getgrnam('mdm');
ok(defined $gid && @pw && $pw[3] == $gid, '... in group mdm');
my @st = stat '/etc/mdm/apnsd.conf';
ok(@st && ($st[2] & 07777) == 0640 && $st[4] == 0 && $st[5] == $gid,
   '/etc/mdm/apnsd.conf root:mdm 0640');
like(qx{dpkg-query -W -f='\${Conffiles}' mdm-apnsd}, qr{/etc/mdm/apnsd\.conf},
     '... a conffile');
my $UNIT = '/lib/systemd/system/mdm-apnsd.service';
my $unit = cat_file($UNIT);
like($unit, qr{^ExecStart=/usr/sbin/mdm-apnsd }m, 'unit runs /usr/sbin');
like($unit, qr{^ConditionPathExists=\|/etc/mdm/push\.pem$}m,
     'unit starts only with a push certificate');
ok(-l '/etc/systemd/system/multi-user.target.wants/mdm-apnsd.service',
   'unit enabled');
SKIP: {
    skip 'no systemd-analyze', 1 unless -x '/usr/bin/systemd-analyze';
    ($rc, $out) = sh("systemd-analyze verify $UNIT");
    is($rc, 0, 'systemd-analyze verify mdm-apnsd.service') or diag($out);
}

# the webhook deliverer: installed, not enabled (it needs a url first)
ok(-x '/usr/sbin/mdm-webhookd', 'mdm-webhookd');
my @wpw = getpwnam('mdm-webhookd');
ok(@wpw && $wpw[3] == $gid, 'system user mdm-webhookd in group mdm');
@st = stat '/etc/mdm/webhookd.conf';
ok(@st && ($st[2] & 07777) == 0640 && $st[4] == 0 && $st[5] == $gid,
   '/etc/mdm/webhookd.conf root:mdm 0640');
like(qx{dpkg-query -W -f='\${Conffiles}' mdm-webhookd},
     qr{/etc/mdm/webhookd\.conf}, '... a conffile');
my $WUNIT = '/lib/systemd/system/mdm-webhookd.service';
like(cat_file($WUNIT), qr{^ExecStart=/usr/sbin/mdm-webhookd }m,
     'webhookd unit runs /usr/sbin');
ok(!-l '/etc/systemd/system/multi-user.target.wants/mdm-webhookd.service',
   'webhookd unit not enabled');
SKIP: {
    skip 'no systemd-analyze', 1 unless -x '/usr/bin/systemd-analyze';
    ($rc, $out) = sh("systemd-analyze verify $WUNIT");
    is($rc, 0, 'systemd-analyze verify mdm-webhookd.service') or diag($out);
}

# ---- the tools ----------------------------------------------------------
($rc, $out) = sh('mdm-apnsd --version');
ok($rc == 0 && $out =~ /\S/, 'mdm-apnsd --version') or diag($out);
($rc, $out) = sh('mdm-webhookd --version');
ok($rc == 0 && $out =~ /mdm-webhookd/, 'mdm-webhookd --version') or diag($out);
($rc, $out) = sh('mdmctl --help');
ok($rc == 0 && $out =~ /mdmctl/, 'mdmctl --help') or diag($out);

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
$t->start_redis(no_functions => 1);
my $sock = $t->redis_sock;
($rc, $out) = sh("mdm-redis-load -s $sock");
is($rc, 0, 'mdm-redis-load') or diag($out);
like($out, qr/^mdm \S+\nmdm_metrics \S+\nmdm_push \S+\nmdm_webhook \S+\n\z/,
     '... prints each version');
like(qx{redis-cli -s $sock FUNCTION LIST}, qr/mdm_push/, '... loaded');
($rc, $out) = sh("mdm-redis-load -s $d/none.sock");
isnt($rc, 0, 'mdm-redis-load fails on an unreachable Redis');

# ---- nginx -t: the system config, then conf.example's locations --------
($rc, $out) = sh('nginx -t -q');
is($rc, 0, 'nginx -t of /etc/nginx with the module enabled') or diag($out);

# conf.example with /etc/mdm and the logs in the test directory, the
# installed modules-enabled snippet instead of its load_module line
my $conf = cat_file("$ROOT/conf.example");
# (load_module must precede every other directive)
$conf =~ s{^load_module .*$}{include $ENABLED;\npid $d/nginx.pid;
error_log $d/error.log;\nevents {}}m
    or die 'conf.example has no load_module';
# the commented-out deployment shapes too
sub uncomment { (my $b = $_[0]) =~ s/^    \# ?/    /mg; $b }
$conf =~ s{^(    \# server \{\n(?:    \# .*\n)*?    \# \})$}{uncomment($1)}mge;
# nginx -t binds the listen addresses: free loopback ports instead
my $n = 0;
$conf =~ s{^(\s*listen )\S+?( ssl)?;}
          {$1 . '127.0.0.1:' . $t->port('l' . $n++) . ($2 // '') . ';'}mge;
$conf =~ s{/etc/mdm/}{$d/mdm/}g;
$conf =~ s{/var/log/nginx/}{$d/}g;
$conf =~ s{unix:/run/redis/\S+?\.sock}{unix:$sock}g;
make_path("$d/mdm");
my %made;
for my $f ($conf =~ m{\Q$d\E/mdm/([^\s;]+)}g) {
    next if $made{$f}++;
    if ($f =~ /secret/) {
        $t->run_cmd("mdmctl secret keygen $d/mdm/$f");
    } elsif ($f =~ /^scep-ca\./) {
        # mdm_scep_ca wants an RSA CA (requesters encrypt to it)
        $made{$_}++ for qw(scep-ca.crt scep-ca.key);
        $t->run_cmd("openssl req -x509 -new -newkey rsa:2048 -nodes"
            . " -keyout $d/mdm/scep-ca.key -subj /CN=SCEP-CA -days 30"
            . " -out $d/mdm/scep-ca.crt");
    } elsif ($f =~ /\.tpl$/) {
        # mdm_enroll refuses a template without the challenge tag
        $t->spew("mdm/$f", "<plist><string>\@MDM_CHALLENGE\@</string></plist>");
    } elsif ($f =~ /\.(crt|key)$/) {
        my $ext = $1;
        my $src = $f =~ /^server/ ? "server.$ext" : 'ca.crt';
        $t->run_cmd("cp $d/$src $d/mdm/$f");
    } else {
        $t->spew("mdm/$f", '');
    }
}
$t->spew('nginx.conf', $conf);
like($conf, qr/mdm_checkin;/, 'conf.example has the MDM locations');
my $servers = () = $conf =~ /^    server \{/mg;
cmp_ok($servers, '>=', 3, "... in every deployment shape ($servers servers)");
($rc, $out) = sh("nginx -t -c $d/nginx.conf");
is($rc, 0, "nginx -t with conf.example's locations") or diag($out);
$t->finish;

# ---- purge ---------------------------------------------------------------
($rc, $out) = sh("$APT purge @PKGS");
is($rc, 0, 'apt-get purge') or diag($out);
$installed = 0 unless $rc;
for my $p (@PKGS) {
    like(qx{dpkg-query -W -f='\${db:Status-Status}' $p 2>/dev/null} // '',
         qr/^(not-installed)?$/, "$p not installed");
    my @left = grep { -e $_ || -l $_ } @{ $files{$p} };
    is("@left", '', "$p: no file left");
}
ok(!-e $ENABLED && !-l $ENABLED && !-l "$ENABLED.removed",
   'modules-enabled link gone');
ok(!-e '/etc/mdm/apnsd.conf', 'conffile purged');
ok(!-e '/etc/mdm/webhookd.conf', 'webhookd conffile purged');
ok(!-l '/etc/systemd/system/multi-user.target.wants/mdm-apnsd.service',
   'unit no longer enabled');
ok(getpwnam('mdm-apnsd'), 'the system user stays (Debian policy)');

done_testing;
