// SPDX-License-Identifier: GPL-2.0
/*
 * copytrace - watch the kernel copy a 16-byte UDP message (lab 1).
 *
 * Two kprobes:
 *   copy #1  _copy_from_iter(void *to, size_t bytes, struct iov_iter *i)
 *            user buffer of the sender -> kernel socket buffer (skb)
 *   copy #4  _copy_to_iter(const void *from, size_t bytes, struct iov_iter *i)
 *            kernel socket buffer (skb) -> user buffer of the receiver
 *
 * Many processes (shells, sshd, udevd, ...) call these functions all the
 * time, so the handlers log only the lab's own copies:
 *
 *   copytrace: [COPY1] src=<user VA> dest=<kernel VA> len=<n>
 *   copytrace: [COPY4] src=<kernel VA> dest=<user VA> len=<n>
 *
 * Load with:  insmod copytrace.ko payload=MESSAGE
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/uio.h>
#include <linux/version.h>

static char *send_sym = "_copy_from_iter";
module_param(send_sym, charp, 0444);
MODULE_PARM_DESC(send_sym, "function that makes copy #1 (user -> kernel)");

static char *recv_sym = "_copy_to_iter";
module_param(recv_sym, charp, 0444);
MODULE_PARM_DESC(recv_sym, "function that makes copy #4 (kernel -> user)");

static char *send_comm = "sender";
module_param(send_comm, charp, 0444);
MODULE_PARM_DESC(send_comm, "process name of the sending program");

static char *recv_comm = "receiver";
module_param(recv_comm, charp, 0444);
MODULE_PARM_DESC(recv_comm, "process name of the receiving program");

static uint msg_len = 16;
module_param(msg_len, uint, 0444);
MODULE_PARM_DESC(msg_len, "length in bytes of the lab's message");

static char *payload = "HELLO_SEND_TRACE";
module_param(payload, charp, 0444);
MODULE_PARM_DESC(payload, "the message the sender sends (for an optional payload filter)");

/*
 * Every call of the probed functions, before any filter: printed at unload,
 * so the student sees how much traffic the filters have to throw away.
 */
static atomic_long_t copy1_calls = ATOMIC_LONG_INIT(0);
static atomic_long_t copy4_calls = ATOMIC_LONG_INIT(0);

static unsigned long iter_user_addr(const struct iov_iter *i);

/* copy #1: _copy_from_iter(void *to, size_t bytes, struct iov_iter *i) */
static int copy1_pre(struct kprobe *p, struct pt_regs *regs)
{
	atomic_long_inc(&copy1_calls);

	/*
	 * TODO(1): [milestone 1] read the three arguments of the probed
	 * function with regs_get_kernel_argument(regs, n): to, bytes and i.
	 */

	/*
	 * TODO(2): [milestone 1] log only the lab's copy: return 0 unless
	 * bytes == msg_len and the current process is send_comm
	 * (current->comm). The length test is the cheaper one: do it first.
	 */

	/*
	 * TODO(3): [milestone 1] print the kernel side with pr_info() and %px:
	 *   [COPY1] dest=<kernel VA> len=<n>
	 * [milestone 2] once TODO(7) works, print the full record instead:
	 *   [COPY1] src=<user VA> dest=<kernel VA> len=<n>
	 * %px takes a pointer: cast the unsigned long, (void *)iter_user_addr(i).
	 */
	return 0;
}

/* copy #4: _copy_to_iter(const void *from, size_t bytes, struct iov_iter *i) */
static int copy4_pre(struct kprobe *p, struct pt_regs *regs)
{
	atomic_long_inc(&copy4_calls);

	/*
	 * TODO(4): [milestone 1] read the three arguments: from, bytes and i.
	 */

	/*
	 * TODO(5): [milestone 1] log only the lab's copy: return 0 unless
	 * bytes == msg_len and the current process is recv_comm.
	 */

	/*
	 * TODO(6): [milestone 1] print the kernel side with pr_info() and %px:
	 *   [COPY4] src=<kernel VA> len=<n>
	 * [milestone 2] once TODO(7) works, print the full record instead:
	 *   [COPY4] src=<kernel VA> dest=<user VA> len=<n>
	 */
	return 0;
}

/*
 * The user-space address an iov_iter currently points at: where copy #1
 * reads from, or where copy #4 writes to. Reading i->iov is safe here: the
 * iterator and its iovec array are kernel memory that the caller of the
 * probed function set up and still holds. Only the user address itself
 * must never be dereferenced.
 */
static unsigned long __maybe_unused iter_user_addr(const struct iov_iter *i)
{
	/*
	 * TODO(7): [milestone 2] return the user address the iterator
	 * points at. On 6.1 a single-buffer sendto()/recv() builds an
	 * ITER_IOVEC iterator: the address is
	 * (unsigned long)i->iov->iov_base + i->iov_offset.
	 * Kernels from 6.4 on (the 6.12 lab VM) build ITER_UBUF:
	 * (unsigned long)i->ubuf + i->iov_offset, and iov is renamed
	 * __iov (read it with iter_iov(i)): guard with LINUX_VERSION_CODE.
	 * Check i and its type (iter_is_iovec, iter_is_ubuf) first; return
	 * 0 for iterators that do not point at user memory.
	 */
	return 0;
}

static struct kprobe kp_send = {
	.pre_handler = copy1_pre,
};

static struct kprobe kp_recv = {
	.pre_handler = copy4_pre,
};

static int __init copytrace_init(void)
{
	int ret;

	kp_send.symbol_name = send_sym;
	ret = register_kprobe(&kp_send);
	if (ret < 0) {
		pr_err("register_kprobe(%s) failed: %d\n", send_sym, ret);
		goto err_send;
	}

	kp_recv.symbol_name = recv_sym;
	ret = register_kprobe(&kp_recv);
	if (ret < 0) {
		pr_err("register_kprobe(%s) failed: %d\n", recv_sym, ret);
		goto err_recv;
	}

	pr_info("probes on %s and %s registered (send_comm=%s recv_comm=%s msg_len=%u)\n",
		send_sym, recv_sym, send_comm, recv_comm, msg_len);
	return 0;

err_recv:
	unregister_kprobe(&kp_send);
err_send:
	return ret;
}

static void __exit copytrace_exit(void)
{
	unregister_kprobe(&kp_recv);
	unregister_kprobe(&kp_send);
	pr_info("probes removed: %ld calls to %s and %ld calls to %s seen in all\n",
		atomic_long_read(&copy1_calls), send_sym, atomic_long_read(&copy4_calls), recv_sym);
}

module_init(copytrace_init);
module_exit(copytrace_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("copylab lab 1: trace copy #1 and copy #4 of a UDP message");
