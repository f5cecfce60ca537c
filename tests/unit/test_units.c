/* test_units.c - bytes for people (binary units, as the settings count K, M and G) and
 * sizes as a config file writes them. */
#include "tests/unit/helpers.h"

#include <string.h>

#include "loader/units.h"

static void test_bytes(void **state)
{
	static const struct {
		uint64_t n;
		const char *text;
	} cases[] = {
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.00 KiB"}, {1536, "1.50 KiB"},
		{64ull << 20, "64.00 MiB"}, {1288490189ull, "1.20 GiB"},
		{470ull << 30, "470.00 GiB"}, {3ull << 40, "3.00 TiB"}, {5ull << 50, "5120.00 TiB"},
	};
	char buf[32];
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		assert_string_equal(qw_fmt_bytes(cases[i].n, buf, sizeof buf), cases[i].text);
}

static void test_sizes(void **state)
{
	static const struct {
		uint64_t n;
		const char *text;
	} cases[] = {
		{64ull << 20, "64M"}, {1536ull << 10, "1536K"}, {3ull << 30, "3G"},
		{4ull << 40, "4096G"}, {3000000, "3000000"}, {1024, "1K"}, {1000, "1000"}, {0, "0"},
	};
	char buf[32];
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		assert_string_equal(qw_fmt_size(cases[i].n, buf, sizeof buf), cases[i].text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bytes),
		cmocka_unit_test(test_sizes),
	};
	return cmocka_run_group_tests_name("units", tests, NULL, NULL);
}
