//! The tc pieces that join a tap to an interface: an ingress qdisc on each, and a u32
//! match-all filter with a mirred egress redirect to the other.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Result;
use crate::netlink::Netlink;

/// The ingress qdisc's handle, `ffff:`.
const INGRESS: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// `tc qdisc add dev NAME ingress` (fails with EEXIST if it has one).
pub fn add_ingress(nl: &mut Netlink, index: u32, name: &str) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
        NLM_F_CREATE | NLM_F_EXCL,
        &format!("add an ingress qdisc on {name}"),
    )
}

/// `tc qdisc del dev NAME ingress`, which takes its filters along.
pub fn del_ingress(nl: &mut Netlink, index: u32, name: &str) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
        0,
        &format!("remove the ingress qdisc of {name}"),
    )
}

/// `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 action mirred egress
/// redirect dev TO`.
pub fn add_redirect(nl: &mut Netlink, from: (u32, &str), to: (u32, &str)) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from.0, to.0)),
        NLM_F_CREATE | NLM_F_EXCL,
        &format!("redirect {} to {}", from.1, to.1),
    )
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.handle = INGRESS;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = from as i32;
    m.header.parent = INGRESS;
    // Priority 1, protocol ETH_P_ALL (network byte order).
    m.header.info = (1 << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut mirred = TcAction::default();
    mirred.tab = 1;
    mirred.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    // One key matching any value under mask 0: every packet.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![mirred])),
    ]));
    m
}
