//! The consumer used until the protocol parsers exist: counts what the streams carried.

use crate::flow::{Direction, FlowMeta, StreamConsumer, StreamEvent};

crate::counter_set! {
    pub struct StreamSummary {
        tcp_bytes_to_server,
        tcp_bytes_to_client,
        udp_bytes,
        gaps,
        flows_closed,
    }
}

impl StreamConsumer for StreamSummary {
    type State = ();

    fn event(&mut self, _flow: &FlowMeta, _state: &mut (), event: StreamEvent<'_>) {
        match event {
            StreamEvent::Data { dir: Direction::ToServer, data } => self.tcp_bytes_to_server += data.len() as u64,
            StreamEvent::Data { dir: Direction::ToClient, data } => self.tcp_bytes_to_client += data.len() as u64,
            StreamEvent::Datagram { data, .. } => self.udp_bytes += data.len() as u64,
            StreamEvent::Gap { .. } => self.gaps += 1,
            StreamEvent::Closed(_) => self.flows_closed += 1,
        }
    }
}
