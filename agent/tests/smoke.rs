mod common;

#[test]
fn check_answers() {
    let agent = common::TestAgent::start();
    let c = agent.client();
    assert!(c.check().unwrap());
}
