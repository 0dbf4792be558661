#!/usr/bin/perl
# The hand-written JSON parser of mdm.lua (jparse) and its canonical
# encoder (jencode) under mutation: seeded byte mutations of real DDM
# documents, run in Redis' own Lua. Every input is either refused with a
# message or accepted; what is accepted is JSON to JSON::PP with the same
# value, and its canonical form is a fixed point. MDM_FUZZ_RUNS=N for more.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use JSON::PP;
use MdmTest;

my $t = MdmTest->new;
my $r = $t->redis;
my $root = MdmTest::root();
my $runs = $ENV{MDM_FUZZ_RUNS} // 20000;
srand($ENV{MDM_FUZZ_SEED} // 20261204);

my $src = $t->slurp("$root/redis-scripts/mdm.lua");
$src =~ s/^#!lua[^\n]*\n//;
$src = "local redis = setmetatable({ register_function = function() end },\n"
       . "    { __index = redis })\n" . $src . "\n";
# each input: "ok <canon>", "again <canon of the canon>" or "err <message>"
my $batch = $src . <<'LUA';
local out = {}
for i = 1, #ARGV do
    local v, e = jparse(ARGV[i])
    if v == nil then
        out[#out + 1] = 'err ' .. tostring(e)
    else
        local c = jencode(v)
        local w = jparse(c)
        out[#out + 1] = 'ok ' .. c
        out[#out + 1] = 'again ' .. (w and jencode(w) or 'unparsable')
    end
end
return out
LUA
my $sha = $r->script_load($batch);

my @seeds = (
    '{"StatusItems":{"device":{"operating-system":{"version":"26.0"}},'
    . '"management":{"declarations":{"configurations":[{"identifier":"a",'
    . '"active":true,"valid":"valid","server-token":"t","reasons":[]}]}}},'
    . '"Errors":[],"FullReport":false}',
    '[{"Type":"com.apple.configuration.softwareupdate.enforcement.specific",'
    . '"Identifier":"x","Payload":{"TargetOSVersion":"26.1",'
    . '"TargetLocalDateTime":"2026-12-24T18:00:00"}}]',
    '{"a":[1,-2.5e3,0.1,1e-7,123456789012345678],"b":null,"c":"\u00e9\ud83d'
    . '\ude00\n\\\"","d":{}}',
    '[[[[{"k":[true,false,null,"s",{"":0}]}]]]]',
);
my @alphabet = split //, qq({}[]:,"\\ntrue false null 0123456789.eE+-u\x00\x01\x7f\xc3\xa9\xff \t\r\n);

sub mutate {
    my $s = $seeds[rand @seeds];
    for (1 .. 1 + int(rand 4)) {
        my $p = int(rand(length($s) + 1));
        my $op = int(rand 4);
        my $c = $alphabet[rand @alphabet];
        if ($op == 0) { substr($s, $p, 1, $c) if $p < length $s }
        elsif ($op == 1) { substr($s, $p, 0, $c) }
        elsif ($op == 2) { substr($s, $p, 1, '') if $p < length $s }
        else { my $q = int(rand(length $s)); $s = substr($s, 0, $p) . substr($s, $q) if $q > $p }
    }
    return $s;
}

my $pp = JSON::PP->new->utf8->allow_nonref;
my ($accepted, $refused, $bad) = (0, 0, 0);
my @diag;
for (my $i = 0; $i < $runs; $i += 200) {
    my @in = map { mutate() } 1 .. 200;
    my $out = eval { $r->evalsha($sha, 0, @in) };
    if (!$out) {
        fail("a Lua error on a batch: $@");
        last;
    }
    my $k = 0;
    for my $s (@in) {
        my $o = $out->[$k++];
        if ($o =~ /^err (.*)/s) {
            $refused++;
            push @diag, "no message for " . unpack('H*', $s) if $1 eq '';
            next;
        }
        $accepted++;
        my ($canon) = $o =~ /^ok (.*)/s;
        my ($again) = $out->[$k++] =~ /^again (.*)/s;
        my $want = eval { $pp->decode($s) };
        my $got = eval { $pp->decode($canon) };
        if (!defined $canon || $again ne $canon) {
            push @diag, "canon not a fixed point for " . unpack('H*', $s);
        } elsif ($@ || !eq_deeply_num($want, $got)) {
            push @diag, "accepted but JSON::PP disagrees: " . unpack('H*', $s);
        }
    }
}
$bad = scalar @diag;
ok $accepted > 100, "some mutations stay JSON ($accepted)";
ok $refused > 100, "most are refused, each with a message ($refused)";
is $bad, 0, 'every accepted input is JSON::PP\'s same value, canon a fixed point'
    or diag join "\n", @diag[0 .. ($#diag < 9 ? $#diag : 9)];

# JSON::PP decodes numbers to numbers or strings; compare numbers by value
sub is_num {
    require B;
    my $f = B::svref_2object(\$_[0])->FLAGS;
    return ($f & (B::SVp_IOK() | B::SVp_NOK())) && !($f & B::SVp_POK());
}

sub eq_deeply_num {
    my ($a, $b) = @_;
    return 0 if ref $a ne ref $b;
    if (ref $a eq 'HASH') {
        return 0 unless keys %$a == keys %$b;
        for (keys %$a) { return 0 unless exists $b->{$_} && eq_deeply_num($a->{$_}, $b->{$_}) }
        return 1;
    }
    if (ref $a eq 'ARRAY') {
        return 0 unless @$a == @$b;
        for (0 .. $#$a) { return 0 unless eq_deeply_num($a->[$_], $b->[$_]) }
        return 1;
    }
    return (defined $a ? "$a" : 'undef') eq (defined $b ? "$b" : 'undef')
        if ref $a;                                  # JSON::PP::Boolean
    return !defined $b if !defined $a;
    return 0 if !defined $b;
    if (is_num($a) || is_num($b)) {
        return abs($a - $b) <= 1e-9 * (abs($a) + abs($b));
    }
    return $a eq $b;
}

$t->finish;
done_testing;
