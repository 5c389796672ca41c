³
fuzz-job¦
[job]
name = "campaign-response"
purpose = "campaign_response"
rounds = 20
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age", "balance"]
categorical = ["job"]
[model]
kind = "logistic"
[training]
local_epochs = 1
batch_size = 64
learning_rate = 0.1
server_optimizer = "fedavg"
