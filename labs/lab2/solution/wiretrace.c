// SPDX-License-Identifier: GPL-2.0
/*
 * wiretrace - follow a UDP message through two network cards (lab 2).
 *
 * Five kprobes, in the order the message meets them:
 *   copy #1  _copy_from_iter(to, bytes, i)        sender's buffer -> skb
 *   TX       e1000_xmit_frame(skb, netdev)        the driver hands the frame to card A,
 *                                                 which reads it from RAM (copy #2, DMA)
 *   unmap    dma_unmap_page_attrs(dev, addr, ...) card B has written a frame (copy #3, DMA)
 *                                                 into the buffer at DMA address addr and
 *                                                 the driver takes that buffer back
 *   RX       eth_type_trans(skb, dev)             the driver hands a frame to the stack:
 *                                                 the card's buffer itself, or a copy of it
 *                                                 (copybreak, a CPU copy of a small frame)
 *   copy #4  _copy_to_iter(from, bytes, i)        skb -> receiver's buffer
 *
 * Records, for the lab's traffic only (UDP to port `port`; ARP is counted, not logged):
 *
 *   wiretrace: [COPY1] src=<user VA> dest=<kernel VA> len=<payload bytes>
 *   wiretrace: [TX] data=<kernel VA> pa=<physical address> len=<frame bytes>
 *   wiretrace: [RX] data=<kernel VA> pa=<physical address> len=<frame bytes>
 *   wiretrace: [COPYBREAK] src=<kernel VA> dest=<kernel VA> len=<frame bytes>
 *   wiretrace: [COPY4] src=<kernel VA> dest=<user VA> len=<payload bytes>
 *
 * Load with:  insmod wiretrace.ko payload=MESSAGE port=PORT
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/device.h>
#include <linux/dma-direction.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/io.h>
#include <linux/ip.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/netdevice.h>
#include <linux/percpu.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/skbuff.h>
#include <linux/string.h>
#include <linux/udp.h>
#include <linux/uaccess.h>
#include <linux/uio.h>
#include <linux/version.h>

static char *send_sym = "_copy_from_iter";
module_param(send_sym, charp, 0444);
MODULE_PARM_DESC(send_sym, "function that makes copy #1 (user -> kernel)");

static char *tx_sym = "e1000_xmit_frame";
module_param(tx_sym, charp, 0444);
MODULE_PARM_DESC(tx_sym, "the driver's transmit function (skb, netdev)");

static char *unmap_sym = "dma_unmap_page_attrs";
module_param(unmap_sym, charp, 0444);
MODULE_PARM_DESC(unmap_sym, "function that gives a DMA buffer back to the CPU (dev, addr, size, dir)");

static char *rx_sym = "eth_type_trans";
module_param(rx_sym, charp, 0444);
MODULE_PARM_DESC(rx_sym, "function the driver calls on each frame it hands to the stack (skb, dev)");

static char *recv_sym = "_copy_to_iter";
module_param(recv_sym, charp, 0444);
MODULE_PARM_DESC(recv_sym, "function that makes copy #4 (kernel -> user)");

static char *nic_driver = "e1000e";
module_param(nic_driver, charp, 0444);
MODULE_PARM_DESC(nic_driver, "driver of the lab's network cards");

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

static ushort port = 9999;
module_param(port, ushort, 0444);
MODULE_PARM_DESC(port, "UDP destination port of the lab's frames");

/* every frame the probes saw, before the filter: printed at unload */
static atomic_long_t tx_frames = ATOMIC_LONG_INIT(0);
static atomic_long_t rx_frames = ATOMIC_LONG_INIT(0);
static atomic_long_t arp_frames = ATOMIC_LONG_INIT(0);

/*
 * The DMA address of the buffer the lab's card has just written, from the
 * unmap probe to the RX probe. Both run on the same CPU in the same turn of
 * the driver's receive loop (softirq, not preempted), so one value per CPU
 * is enough; 0 means none.
 */
static DEFINE_PER_CPU(dma_addr_t, card_buf);

static unsigned long iter_user_addr(const struct iov_iter *i);
static phys_addr_t kernel_pa(const void *va);

/* Is this device (a PCI function) driven by the lab's network card driver? */
static bool is_lab_nic(const struct device *dev)
{
	return dev && dev->driver && dev->driver->name &&
	       strcmp(dev->driver->name, nic_driver) == 0;
}

/*
 * Classify the frame at data (len bytes in the linear part of an skb):
 * true for an IPv4 UDP frame to the lab's port. ARP frames are counted.
 * The headers are read with copy_from_kernel_nofault: a wrong pointer then
 * fails the copy instead of oopsing the kernel.
 */
static bool lab_frame(const void *data, unsigned int len)
{
	struct {
		struct ethhdr eth;
		struct iphdr ip;
	} __packed h;
	struct udphdr udp;
	unsigned int ihl;

	if (len < sizeof(h) || copy_from_kernel_nofault(&h, data, sizeof(h)))
		return false;
	if (h.eth.h_proto == htons(ETH_P_ARP)) {
		atomic_long_inc(&arp_frames);
		return false;
	}
	if (h.eth.h_proto != htons(ETH_P_IP) || h.ip.protocol != IPPROTO_UDP)
		return false;
	ihl = h.ip.ihl * 4;
	if (ihl < sizeof(h.ip) || len < ETH_HLEN + ihl + sizeof(udp) ||
	    copy_from_kernel_nofault(&udp, data + ETH_HLEN + ihl, sizeof(udp)))
		return false;
	return udp.dest == htons(port);
}

/* copy #1: _copy_from_iter(void *to, size_t bytes, struct iov_iter *i) */
static int copy1_pre(struct kprobe *p, struct pt_regs *regs)
{
	/*
	 * TODO(1): [milestone 1] as in lab 1: read to, bytes and i, keep only
	 * the sender's copy of msg_len bytes, and print
	 *   [COPY1] src=<user VA> dest=<kernel VA> len=<n>
	 * (start from your lab 1 handler and iter_user_addr).
	 */
	/* BEGIN SOLUTION */
	void *to = (void *)regs_get_kernel_argument(regs, 0);
	size_t bytes = regs_get_kernel_argument(regs, 1);
	struct iov_iter *i = (struct iov_iter *)regs_get_kernel_argument(regs, 2);

	if (bytes != msg_len || strcmp(current->comm, send_comm) != 0)
		return 0;
	pr_info("[COPY1] src=%px dest=%px len=%zu\n", (void *)iter_user_addr(i), to, bytes);
	/* END SOLUTION */
	return 0;
}

/* TX: e1000_xmit_frame(struct sk_buff *skb, struct net_device *netdev) */
static int tx_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct sk_buff *skb = (struct sk_buff *)regs_get_kernel_argument(regs, 0);

	atomic_long_inc(&tx_frames);
	if (!skb)
		return 0;
	/*
	 * TODO(2): [milestone 1] keep only the lab's frame: return 0 unless
	 * lab_frame(skb->data, skb_headlen(skb)) says so. The driver is
	 * called in softirq context too (a frame that waited for ARP), so
	 * current->comm cannot tell the lab's frame apart: its UDP port can.
	 */
	/* BEGIN SOLUTION */
	if (!lab_frame(skb->data, skb_headlen(skb)))
		return 0;
	/* END SOLUTION */

	/*
	 * TODO(3): [milestone 1] print where the frame starts and how long it is:
	 *   [TX] data=<kernel VA> len=<n>
	 * skb->data (with %px) and skb->len (all headers included).
	 * [milestone 2] once TODO(9) works, print the full record instead:
	 *   [TX] data=<kernel VA> pa=<physical address> len=<n>
	 * with pa=%016llx of (unsigned long long)kernel_pa(skb->data).
	 */
	/* BEGIN SOLUTION */
	pr_info("[TX] data=%px pa=%016llx len=%u\n", skb->data,
		(unsigned long long)kernel_pa(skb->data), skb->len);
	/* END SOLUTION */
	return 0;
}

/* unmap: dma_unmap_page_attrs(dev, dma_addr_t addr, size_t size, dir, attrs) */
static int unmap_pre(struct kprobe *p, struct pt_regs *regs)
{
	/*
	 * TODO(4): [milestone 2] remember the DMA address of the buffer the
	 * card has just written: when dir (argument 3) is DMA_FROM_DEVICE and
	 * dev (argument 0) is_lab_nic(), store addr (argument 1) in this CPU's
	 * card_buf with this_cpu_write().
	 */
	/* BEGIN SOLUTION */
	struct device *dev = (struct device *)regs_get_kernel_argument(regs, 0);
	dma_addr_t addr = regs_get_kernel_argument(regs, 1);
	enum dma_data_direction dir = regs_get_kernel_argument(regs, 3);

	if (dir == DMA_FROM_DEVICE && is_lab_nic(dev))
		this_cpu_write(card_buf, addr);
	/* END SOLUTION */
	return 0;
}

/*
 * Do the len bytes at a and at b hold the same frame? Read in small pieces
 * with copy_from_kernel_nofault, so a bad address fails the comparison.
 */
static bool __maybe_unused same_bytes(const void *a, const void *b, unsigned int len)
{
	u8 x[64], y[64];
	unsigned int off, n;

	for (off = 0; off < len; off += n) {
		n = min_t(unsigned int, len - off, sizeof(x));
		if (copy_from_kernel_nofault(x, a + off, n) ||
		    copy_from_kernel_nofault(y, b + off, n) || memcmp(x, y, n) != 0)
			return false;
	}
	return true;
}

/* RX: eth_type_trans(struct sk_buff *skb, struct net_device *dev) */
static int rx_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct sk_buff *skb = (struct sk_buff *)regs_get_kernel_argument(regs, 0);
	struct net_device *dev = (struct net_device *)regs_get_kernel_argument(regs, 1);
	dma_addr_t dma = this_cpu_read(card_buf);
	void *card;

	if (!dev || !is_lab_nic(dev->dev.parent))
		return 0;
	this_cpu_write(card_buf, 0);
	atomic_long_inc(&rx_frames);
	if (!skb || !lab_frame(skb->data, skb_headlen(skb)))
		return 0;
	/* the unmap probe saw no buffer of the lab's cards come back on this CPU */
	if (!dma)
		return 0;

	/*
	 * TODO(5): [milestone 2] find the buffer the card wrote: with no IOMMU
	 * a DMA address is a physical address, so its kernel VA is
	 * phys_to_virt(dma). Return 0 when pfn_valid(PHYS_PFN(dma)) is false
	 * (not RAM). The frame starts at the buffer's first byte.
	 */
	/* BEGIN SOLUTION */
	if (!pfn_valid(PHYS_PFN(dma)))
		return 0;
	card = phys_to_virt(dma);
	/* END SOLUTION */
	/* SKELETON: card = NULL; */

	/*
	 * TODO(6): [milestone 2] print the card's buffer:
	 *   [RX] data=<kernel VA> pa=<physical address> len=<n>
	 * with card, kernel_pa(card) and skb->len (the frame as received).
	 */
	/* BEGIN SOLUTION */
	pr_info("[RX] data=%px pa=%016llx len=%u\n", card,
		(unsigned long long)kernel_pa(card), skb->len);
	/* END SOLUTION */

	/*
	 * TODO(7): [milestone 3] copybreak: when the skb handed to the stack
	 * is not the card's buffer (skb->data != card) and holds the same
	 * bytes (same_bytes(card, skb->data, skb->len)), the driver copied the
	 * frame with the CPU: print
	 *   [COPYBREAK] src=<kernel VA> dest=<kernel VA> len=<n>
	 * Print nothing when the driver handed up its own buffer.
	 */
	/* BEGIN SOLUTION */
	if (skb->data != card && same_bytes(card, skb->data, skb->len))
		pr_info("[COPYBREAK] src=%px dest=%px len=%u\n", card, skb->data, skb->len);
	/* END SOLUTION */
	return 0;
}

/* copy #4: _copy_to_iter(const void *from, size_t bytes, struct iov_iter *i) */
static int copy4_pre(struct kprobe *p, struct pt_regs *regs)
{
	/*
	 * TODO(8): [milestone 1] as in lab 1: read from, bytes and i, keep
	 * only the receiver's copy of msg_len bytes, and print
	 *   [COPY4] src=<kernel VA> dest=<user VA> len=<n>
	 */
	/* BEGIN SOLUTION */
	const void *from = (const void *)regs_get_kernel_argument(regs, 0);
	size_t bytes = regs_get_kernel_argument(regs, 1);
	struct iov_iter *i = (struct iov_iter *)regs_get_kernel_argument(regs, 2);

	if (bytes != msg_len || strcmp(current->comm, recv_comm) != 0)
		return 0;
	pr_info("[COPY4] src=%px dest=%px len=%zu\n", from, (void *)iter_user_addr(i), bytes);
	/* END SOLUTION */
	return 0;
}

/*
 * The physical address of a kernel VA in the direct map (skb buffers are),
 * or 0 for an address outside it.
 */
static phys_addr_t __maybe_unused kernel_pa(const void *va)
{
	/*
	 * TODO(9): [milestone 2] return virt_to_phys(va) when
	 * virt_addr_valid(va), else 0. virt_to_phys() is only defined for the
	 * direct map: vmalloc or module addresses have no fixed physical twin.
	 * It takes a non-const pointer: pass (void *)va, or the build warns.
	 */
	/* BEGIN SOLUTION */
	if (!va || !virt_addr_valid(va))
		return 0;
	return virt_to_phys((void *)va);
	/* END SOLUTION */
	/* SKELETON: return 0; */
}

/* As in lab 1: the user address an iov_iter points at, 0 if none. */
static unsigned long __maybe_unused iter_user_addr(const struct iov_iter *i)
{
	/*
	 * TODO(10): [milestone 1] copy your lab 1 iter_user_addr here.
	 */
	/* BEGIN SOLUTION */
	if (!i)
		return 0;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 0, 0)
	if (iter_is_ubuf(i))
		return (unsigned long)i->ubuf + i->iov_offset;
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	if (iter_is_iovec(i) && iter_iov(i))
		return (unsigned long)iter_iov(i)->iov_base + i->iov_offset;
#else
	if (iter_is_iovec(i) && i->iov)
		return (unsigned long)i->iov->iov_base + i->iov_offset;
#endif
	return 0;
	/* END SOLUTION */
	/* SKELETON: return 0; */
}

static struct kprobe kp_copy1 = { .pre_handler = copy1_pre };
static struct kprobe kp_tx = { .pre_handler = tx_pre };
static struct kprobe kp_unmap = { .pre_handler = unmap_pre };
static struct kprobe kp_rx = { .pre_handler = rx_pre };
static struct kprobe kp_copy4 = { .pre_handler = copy4_pre };

/* in registration order; unregistered in reverse */
static struct kprobe *const probes[] = { &kp_copy1, &kp_tx, &kp_unmap, &kp_rx, &kp_copy4 };

static int __init wiretrace_init(void)
{
	unsigned int n;
	int ret;

	kp_copy1.symbol_name = send_sym;
	kp_tx.symbol_name = tx_sym;
	kp_unmap.symbol_name = unmap_sym;
	kp_rx.symbol_name = rx_sym;
	kp_copy4.symbol_name = recv_sym;

	for (n = 0; n < ARRAY_SIZE(probes); n++) {
		ret = register_kprobe(probes[n]);
		if (ret < 0) {
			pr_err("register_kprobe(%s) failed: %d\n", probes[n]->symbol_name, ret);
			goto err_unregister;
		}
	}

	pr_info("probes on %s %s %s %s %s registered (port=%u msg_len=%u nic_driver=%s)\n",
		send_sym, tx_sym, unmap_sym, rx_sym, recv_sym, port, msg_len, nic_driver);
	return 0;

err_unregister:
	while (n--)
		unregister_kprobe(probes[n]);
	return ret;
}

static void __exit wiretrace_exit(void)
{
	unsigned int n = ARRAY_SIZE(probes);

	while (n--)
		unregister_kprobe(probes[n]);
	pr_info("probes removed: %ld frames sent and %ld received by the %s cards, %ld of them ARP\n",
		atomic_long_read(&tx_frames), atomic_long_read(&rx_frames), nic_driver,
		atomic_long_read(&arp_frames));
}

module_init(wiretrace_init);
module_exit(wiretrace_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("copylab lab 2: trace a UDP message through two network cards");
