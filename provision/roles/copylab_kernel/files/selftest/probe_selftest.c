// SPDX-License-Identifier: GPL-2.0
/*
 * probe_selftest - copylab provisioning self-test.
 *
 * Checks that the running kernel lets a module register kprobes on the copy
 * functions lab 1 traces (defaults: _copy_from_iter and _copy_to_iter).
 *
 * Module init registers one kprobe per non-empty symbol parameter, logs the
 * result and unregisters the probes again. When the kernel refuses a probe,
 * init logs
 *
 *	probe_selftest: register_kprobe(<symbol>) failed: <errno>
 *
 * and returns that error, so insmod fails. On success init returns 0 and the
 * module holds nothing until it is removed with rmmod.
 *
 * Usage: insmod probe_selftest.ko send_sym=SYM recv_sym=SYM   (empty: skip)
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/errno.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/types.h>

static char *send_sym = "_copy_from_iter";
module_param(send_sym, charp, 0444);
MODULE_PARM_DESC(send_sym, "first symbol to probe (default _copy_from_iter, empty: skip)");

static char *recv_sym = "_copy_to_iter";
module_param(recv_sym, charp, 0444);
MODULE_PARM_DESC(recv_sym, "second symbol to probe (default _copy_to_iter, empty: skip)");

static int selftest_pre_handler(struct kprobe *p, struct pt_regs *regs)
{
	return 0;
}

static struct kprobe send_probe = {
	.pre_handler = selftest_pre_handler,
};

static struct kprobe recv_probe = {
	.pre_handler = selftest_pre_handler,
};

static bool sym_given(const char *sym)
{
	return sym && *sym;
}

static int selftest_register(struct kprobe *kp, const char *sym)
{
	int ret;

	kp->symbol_name = sym;
	ret = register_kprobe(kp);
	if (ret < 0) {
		pr_err("register_kprobe(%s) failed: %d\n", sym, ret);
		return ret;
	}
	pr_info("register_kprobe(%s) ok at %pS\n", sym, kp->addr);
	return 0;
}

static int __init probe_selftest_init(void)
{
	bool want_send = sym_given(send_sym);
	bool want_recv = sym_given(recv_sym);
	int ret;

	if (!want_send && !want_recv) {
		pr_err("no symbol to probe: set send_sym and/or recv_sym\n");
		return -EINVAL;
	}

	if (want_send) {
		ret = selftest_register(&send_probe, send_sym);
		if (ret)
			goto out;
	}

	if (want_recv) {
		ret = selftest_register(&recv_probe, recv_sym);
		if (ret)
			goto out_unregister_send;
	}

	pr_info("ok: kprobes on %s %s\n",
		want_send ? send_sym : "-", want_recv ? recv_sym : "-");

	if (want_recv)
		unregister_kprobe(&recv_probe);
	ret = 0;

out_unregister_send:
	if (want_send)
		unregister_kprobe(&send_probe);
out:
	return ret;
}

static void __exit probe_selftest_exit(void)
{
	pr_info("unloaded\n");
}

module_init(probe_selftest_init);
module_exit(probe_selftest_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("copylab");
MODULE_DESCRIPTION("copylab provisioning self-test: kprobes on the lab's copy functions");
