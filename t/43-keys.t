#!/usr/bin/perl

# The key schema has one source, redis-scripts/keys.def: its generated
# outputs are current, and no C or Lua source spells a key by hand.

use strict;
use warnings;
use FindBin;
use Test::More;

my $root = "$FindBin::Bin/..";

my $out = `$root/tools/gen-keys --check 2>&1`;
is $?, 0, 'common/mdm_keys.h and the Lua key blocks match keys.def'
    or diag $out;

my @src = map { glob "$root/$_" }
    qw(ngx_http_mdm_module/*.[ch] apnsd/*.[ch] webhookd/*.[ch] mdmctl/*.[ch] bench/*.[ch]
       common/*.[ch] redis-scripts/*.lua);
ok @src > 20, 'sources found';

my @hand;
for my $f (@src) {
    next if $f =~ m{/common/mdm_keys\.h$};
    open my $fh, '<', $f or die "$f: $!";
    my $gen = 0;
    while (my $l = <$fh>) {
        $gen = 1 if $l =~ /^-- BEGIN keys/;
        if ($gen) { $gen = 0 if $l =~ /^-- END keys/; next; }
        next if $l =~ m{^\s*(\*|/\*|//|--)};      # comments may name keys
        (my $code = $l) =~ s{/\*.*?\*/|--.*$}{}g;
        push @hand, "$f:$.: $l" if $code =~ /["']mdm:[{a-z%]/;
    }
}
$_ =~ s{^\Q$root\E/}{} for @hand;
is scalar(@hand), 0, 'no key spelled by hand outside keys.def'
    or diag join '', @hand;

done_testing;
